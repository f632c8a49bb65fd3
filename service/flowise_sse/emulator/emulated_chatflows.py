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
VISION_CHATFLOW_ID = "6f1d2a7e-5b8c-4e3f-9a1d-2c7b8e9f0a14"

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
    # Its chat model's "Allow Image Uploads", and a speech-to-text provider turned on.
    images: bool = False
    speech_to_text: bool = False

    @property
    def flow_data(self) -> str:
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
            "apikeyid": _APIKEY_ID if self.keyed else None, "chatbotConfig": None, "apiConfig": None,
            "analytic": None, "speechToText": self.speech_to_text_config,
        }
        if not quirks.entity_type_column:  # 1.x databases got `category` from a later migration, hence last
            return entity | {"createdDate": _CREATED, "updatedDate": _UPDATED, "category": None}
        if not quirks.entity_workspace_fields:
            return entity | {"category": None, "type": "CHATFLOW", "createdDate": _CREATED, "updatedDate": _UPDATED}
        return entity | {
            "textToSpeech": None, "followUpPrompts": None, "category": None, "type": "CHATFLOW",
            "createdDate": _CREATED, "updatedDate": _UPDATED, "mcpServerConfig": None,
            "webhookSecretConfigured": False, "workspaceId": _WORKSPACE_ID,
        }


    @property
    def speech_to_text_config(self) -> str | None:
        if not self.speech_to_text:
            return None
        return orjson.dumps({"openAIWhisper": {"status": True, "credentialId": _APIKEY_ID}}).decode()

    def uploads(self) -> dict[str, Any]:
        """The `uploads` of its public chatbot config (Flowise's utilGetUploadsConfig)."""
        return {
            "isSpeechToTextEnabled": self.speech_to_text, "isImageUploadAllowed": self.images,
            "isRAGFileUploadAllowed": False,
            # Flowise splits "image/gif;image/jpeg;image/png;image/webp;" on ";": hence the "".
            "imgUploadSizeAndTypes": [{"fileTypes": ["image/gif", "image/jpeg", "image/png", "image/webp", ""],
                                       "maxUploadSize": 5}] if self.images else [],
            "fileUploadSizeAndTypes": [],
        }


CHATFLOWS = {
    flow.id: flow
    for flow in (
        Chatflow(DEMO_CHATFLOW_ID, "Demo chat (emulated Flowise)", streaming=True),
        Chatflow(KEYED_CHATFLOW_ID, "Keyed chat (emulated Flowise)", streaming=True, keyed=True),
        Chatflow(NONSTREAMING_CHATFLOW_ID, "Non-streaming chat (emulated Flowise)", streaming=False),
        Chatflow(VISION_CHATFLOW_ID, "Vision chat (emulated Flowise)", streaming=True, images=True,
                 speech_to_text=True),
    )
}
