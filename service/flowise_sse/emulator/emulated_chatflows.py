"""The emulator's fixed chatflows, their ids, and their database entity as each version returns it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from .quirks import Quirks

DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"
KEYED_CHATFLOW_ID = "a11fa90f-86df-4ab3-9f78-30d246bf5254"
NONSTREAMING_CHATFLOW_ID = "d3b059cf-c070-4f62-a55e-5304b4d2c05f"
# A chatflow with everything a chat front-end (or an OpenAI client's images and audio) uses
# switched on: a vision model, speech-to-text, full-file uploads, RAG uploads, starter prompts,
# feedback, leads.
UPLOADS_CHATFLOW_ID = "5b1f7e0c-2a6d-4c8e-9f31-7d2e4a6b8c90"
# Agentflows V2 (3.x only): one that stops at a Human Input node, one that starts with a form.
HUMAN_INPUT_AGENTFLOW_ID = "8e4d2b1a-6c3f-4e7a-b5d9-0f1e2c3a4b5d"
FORM_AGENTFLOW_ID = "c7a9e5d3-1b2f-4a6c-8e0d-9f8b7a6c5d4e"

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE)
_CREATED, _UPDATED = "2026-11-24T22:53:02.000Z", "2026-11-24T23:15:48.000Z"
_APIKEY_ID = "e312cb12-76cc-4347-9724-d7d661900c87"
_WORKSPACE_ID = "06a45604-46c2-4da8-b150-084a673512dc"


@dataclass(frozen=True)
class Chatflow:
    id: str
    name: str
    streaming: bool
    keyed: bool = False
    kind: str = "CHATFLOW"  # "AGENTFLOW": an Agentflow V2
    start: str = "chatInput"  # an Agentflow V2's start input: chatInput or formInput
    human_input: bool = False  # an Agentflow V2 that stops at a Human Input node
    images: bool = False  # its chat model's "Allow Image Uploads"
    speech_to_text: bool = False  # a speech-to-text provider turned on
    chatbot_config: dict[str, Any] | None = None  # as stored (a JSON string in the entity)

    @property
    def form_inputs(self) -> list[dict[str, Any]]:
        return list(FORM_INPUTS) if self.start == "formInput" else []

    @property
    def uploads_config(self) -> dict[str, Any]:
        """The `uploads` of its public chatbot config (Flowise's getUploadsConfig)."""
        config = (self.chatbot_config or {})
        return {
            "isSpeechToTextEnabled": self.speech_to_text,
            "isImageUploadAllowed": self.images,
            "isRAGFileUploadAllowed": bool(config.get("ragFileUpload")),
            # Flowise splits "image/gif;image/jpeg;image/png;image/webp;" on ";": hence the "".
            "imgUploadSizeAndTypes": [{"fileTypes": ["image/gif", "image/jpeg", "image/png", "image/webp", ""],
                                       "maxUploadSize": 5}] if self.images else [],
            "fileUploadSizeAndTypes": [],
        }

    @property
    def speech_to_text_config(self) -> str | None:
        """Its `speechToText` column: the provider turned on (a JSON string, as stored)."""
        if not self.speech_to_text:
            return None
        return orjson.dumps({"openAIWhisper": {"status": True, "credentialId": _APIKEY_ID}}).decode()

    @property
    def flow_data(self) -> str:
        if self.kind == "AGENTFLOW":
            start = {"id": "startAgentflow_0", "data": {"name": "startAgentflow", "label": "Start", "inputs": {
                "startInputType": self.start, "formTitle": "About you" if self.form_inputs else "",
                "formDescription": "", "formInputTypes": self.form_inputs}}}
            last = ("humanInputAgentflow_0", "humanInputAgentflow", "Human Input") if self.human_input else (
                "llmAgentflow_0", "llmAgentflow", "LLM")
            agentflow: list[dict[str, Any]] = [
                start, {"id": last[0], "data": {"name": last[1], "label": last[2], "inputs": {}}}]
            edges = [{"source": "startAgentflow_0", "target": last[0]}]
            return orjson.dumps({"nodes": agentflow, "edges": edges}).decode()
        # 1.6.2 refuses to stream with chatOpenAICustom, which explains the non-streaming flow.
        model = "chatOpenAI" if self.streaming else "chatOpenAICustom"
        nodes = [(f"{model}_0", model, "Chat Models"), ("bufferMemory_0", "bufferMemory", "Memory"),
                 ("conversationChain_0", "conversationChain", "Chains")]
        inputs = {"allowImageUploads": True} if self.images else {}
        return orjson.dumps({
            "nodes": [{"id": id_, "data": {"name": name, "category": category,
                                           "inputs": inputs if category == "Chat Models" else {}}}
                      for id_, name, category in nodes],
            "edges": [{"source": source, "target": "conversationChain_0"} for source, _, _ in nodes[:2]],
        }).decode()

    def entity(self, quirks: Quirks) -> dict[str, Any]:
        """The chatflow as `GET /api/v1/chatflows[/{id}]` returns it, keys in the version's column order."""
        entity: dict[str, Any] = {
            "id": self.id, "name": self.name, "flowData": self.flow_data, "deployed": False, "isPublic": False,
            "apikeyid": _APIKEY_ID if self.keyed else None,
            "chatbotConfig": orjson.dumps(self.chatbot_config).decode() if self.chatbot_config else None,
            "apiConfig": None, "analytic": None, "speechToText": self.speech_to_text_config,
        }
        if not quirks.entity_type_column:  # 1.x databases got `category` from a later migration, hence last
            return entity | {"createdDate": _CREATED, "updatedDate": _UPDATED, "category": None}
        if not quirks.entity_workspace_fields:
            return entity | {"category": None, "type": self.kind, "createdDate": _CREATED, "updatedDate": _UPDATED}
        return entity | {
            "textToSpeech": None, "followUpPrompts": None, "category": None, "type": self.kind,
            "createdDate": _CREATED, "updatedDate": _UPDATED, "mcpServerConfig": None,
            "webhookSecretConfigured": False, "workspaceId": _WORKSPACE_ID,
        }


FORM_INPUTS = (
    {"type": "string", "label": "Name", "name": "name", "addOptions": ""},
    {"type": "number", "label": "Age", "name": "age", "addOptions": ""},
)
UPLOADS_CONFIG = {
    "welcomeMessage": "Hello! Send a picture, a recording or a file.",
    "starterPrompts": {"0": {"prompt": "What is in this picture?"}, "1": {"prompt": "Summarise my file"}},
    "chatFeedback": {"status": True},
    "leads": {"status": True, "title": "Let us keep in touch", "email": True},
    "fullFileUpload": {"status": True, "allowedUploadFileTypes": "text/plain,text/csv,application/json"},
    "ragFileUpload": True,
    # Flowise 3.x drops these two from its public answer; older releases do not, the gateway does.
    "allowedOrigins": ["https://chat.example"],
    "allowedOriginsError": "This site is not allowed",
}

CHATFLOWS = {
    flow.id: flow
    for flow in (
        Chatflow(DEMO_CHATFLOW_ID, "Demo chat (emulated Flowise)", streaming=True),
        Chatflow(KEYED_CHATFLOW_ID, "Keyed chat (emulated Flowise)", streaming=True, keyed=True),
        Chatflow(NONSTREAMING_CHATFLOW_ID, "Non-streaming chat (emulated Flowise)", streaming=False),
        Chatflow(UPLOADS_CHATFLOW_ID, "Uploads chat (emulated Flowise)", streaming=True, images=True,
                 speech_to_text=True, chatbot_config=UPLOADS_CONFIG),
    )
}
AGENTFLOWS = {
    flow.id: flow
    for flow in (
        Chatflow(HUMAN_INPUT_AGENTFLOW_ID, "Human input agentflow (emulated Flowise)", streaming=True,
                 kind="AGENTFLOW", human_input=True),
        Chatflow(FORM_AGENTFLOW_ID, "Form agentflow (emulated Flowise)", streaming=True, kind="AGENTFLOW",
                 start="formInput"),
    )
}
