"""What Flowise does with a conversation besides answering it: uploads (stored under the chat,
shown to a vision model, turned into the question by speech-to-text, prepended as a document),
Agentflow V2 forms and human input (a run that stops, and its resume by session), feedback,
stored files, attachments, RAG upserts and the public chatbot config.

As on the real servers (checked on 3.1.4 and 2.2.8, see `../shared/flowise-conversation.md`):
a `file` upload is stored as `<chatflow>/<chatId>/<name>`; a stopped Agentflow is stored under
its session (`overrideConfig.sessionId`, else the chatId) and only a STOPPED one resumes.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .emulated_chatflows import Chatflow
from .flowise_errors import error, json_response
from .quirks import Quirks

HUMAN_INPUT_NODE = {"nodeId": "humanInputAgentflow_0", "nodeLabel": "Human Input"}
STOPPED, FINISHED = "STOPPED", "FINISHED"


@dataclass(slots=True)
class Prepared:
    """A prediction's input once Flowise has processed its uploads and Agentflow fields."""

    question: str
    images: list[str] = field(default_factory=list)  # what the vision model gets: data URIs, URLs
    file_uploads: list[dict[str, Any]] = field(default_factory=list)  # as stored with the message
    failure: str | None = None  # buildChatflow fails with this (an SSE `error`, a JSON 500)
    agentflow: bool = False
    leading: list[dict[str, Any]] = field(default_factory=list)
    trailing: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # extra `metadata` fields (a stopped run's action)


def _event(name: str, data: Any) -> dict[str, Any]:
    return {"event": name, "data": data}


def _decoded(data_uri: str) -> bytes:
    try:
        return base64.b64decode(data_uri.split(",")[-1], validate=False)
    except (binascii.Error, ValueError):
        return b""


class Conversation:
    """The emulated server's stores besides chatflows: files, feedback, Agentflow executions."""

    def __init__(self, quirks: Quirks, chatflows: dict[str, Chatflow], messages: Any) -> None:
        self.quirks = quirks
        self.chatflows = chatflows
        self.messages = messages  # Records.answers: the stored chat messages
        self.files: dict[tuple[str, str, str], tuple[bytes, str]] = {}
        self.feedback: dict[str, dict[str, Any]] = {}
        self.executions: dict[tuple[str, str], dict[str, Any]] = {}

    # --- a prediction's input -------------------------------------------------------------
    def prepare(self, flow: Chatflow, body: dict[str, Any], chat_id: str, session_id: str) -> Prepared:
        quirks = self.quirks
        prepared = Prepared(question=str(body.get("question") or ""))
        full_text = ""
        uploads = body.get("uploads")
        for upload in uploads if isinstance(uploads, list) else ():
            if not isinstance(upload, dict):
                continue
            kind, data = upload.get("type"), upload.get("data")
            name, mime = str(upload.get("name") or ""), str(upload.get("mime") or "")
            stored = kind in ("file", "audio") or (kind == "file:rag" and quirks.full_file_uploads)
            if stored and isinstance(data, str) and data:
                content = _decoded(data)
                self.files[(flow.id, chat_id, name)] = (content, mime)
                prepared.file_uploads.append({"type": "stored-file", "name": name, "mime": mime})
                if kind == "file" and flow.images and mime.startswith("image/"):
                    prepared.images.append(data)
                if kind == "audio" and flow.speech_to_text and (
                        mime == "audio/webm" or (quirks.more_audio_types and mime in ("audio/mp4", "audio/ogg"))):
                    # Speech-to-text: the emulated recording holds its own transcript as text.
                    prepared.question = content.decode("utf-8", "replace")
            elif kind == "url" and quirks.upload_url and isinstance(data, str):
                prepared.file_uploads.append({"type": "url", "name": name, "mime": mime or "image/png", "data": data})
                if flow.images:
                    prepared.images.append(data)
            elif kind == "file:full" and quirks.full_file_uploads and isinstance(data, str) and data:
                full_text += f"<doc name='{name}'>{data}</doc>\n\n"
                prepared.file_uploads.append({"type": "stored-file:full", "name": name, "mime": mime})
        if full_text:
            prepared.question = f"{full_text}\n\n{prepared.question}"
        if flow.kind == "AGENTFLOW" and quirks.agentflow_v2:
            self._agentflow(flow, body, session_id, prepared)
        return prepared

    def _agentflow(self, flow: Chatflow, body: dict[str, Any], session_id: str, prepared: Prepared) -> None:
        prepared.agentflow = True
        form, reply = body.get("form"), body.get("humanInput")
        if form is not None and body.get("question"):
            prepared.failure = "Question and form cannot be provided at the same time"
            return
        key = (flow.id, session_id)
        node = HUMAN_INPUT_NODE if flow.human_input else {"nodeId": "llmAgentflow_0", "nodeLabel": "LLM"}
        prepared.leading = [_event("agentFlowEvent", "INPROGRESS"),
                            _event("nextAgentFlow", {**node, "status": "INPROGRESS"})]
        if isinstance(form, dict):
            prepared.question = " ".join(f"{name}={value}" for name, value in form.items())
        if isinstance(reply, dict):
            execution = self.executions.get(key)
            if execution is None:
                prepared.failure = f"No previous execution found for session {session_id}"
                return
            if execution["state"] != STOPPED:
                prepared.failure = (f"Cannot resume execution {execution['id']} because it is in "
                                    f"'{execution['state']}' state. Only executions in 'STOPPED' state (or "
                                    "'ERROR' after 'STOPPED') can be resumed.")
                return
            prepared.question = f"{reply.get('type')}: {reply.get('feedback') or ''}".strip()
            execution["state"] = FINISHED
            prepared.trailing = [_event("nextAgentFlow", {**node, "status": FINISHED}),
                                 _event("agentFlowEvent", FINISHED)]
            return
        if not flow.human_input:
            self.executions[key] = {"id": str(uuid.uuid4()), "state": FINISHED}
            prepared.trailing = [_event("nextAgentFlow", {**node, "status": FINISHED}),
                                 _event("agentFlowEvent", FINISHED)]
            return
        self.executions[key] = {"id": str(uuid.uuid4()), "state": STOPPED}
        action = {
            "id": str(uuid.uuid4()), "mapping": {"approve": "Proceed", "reject": "Reject"},
            "elements": [{"type": "agentflowv2-approve-button", "label": "Proceed"},
                         {"type": "agentflowv2-reject-button", "label": "Reject"}],
            "data": {**node, "input": {"question": prepared.question}},
        }
        prepared.trailing = [
            _event("nextAgentFlow", {**node, "status": STOPPED}),
            _event("agentFlowExecutedData", [{**node, "status": STOPPED, "data": {}, "previousNodeIds": []}]),
            _event("agentFlowEvent", STOPPED), _event("action", action), _event("agentFlowEvent", STOPPED),
        ]
        if self.quirks.metadata_action:
            prepared.metadata = {"action": action}

    # --- side routes -----------------------------------------------------------------------
    async def public_config(self, request: Request) -> Response:
        flow = self.chatflows.get(request.path_params["id"])
        if flow is None:
            return error(self.quirks, 404 if not self.quirks.json_errors else 500,
                         f"Chatflow {request.path_params['id']} not found")
        config = dict(flow.chatbot_config or {})
        if self.quirks.public_config_sanitised:
            config.pop("allowedOrigins", None)
            config.pop("allowedOriginsError", None)
            return json_response({**config, "uploads": flow.uploads_config, "flowData": flow.flow_data,
                                  "isTTSEnabled": False})
        return json_response({**config, "uploads": flow.uploads_config})

    async def create_feedback(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            return error(self.quirks, 500, "Error: feedbackService.createChatMessageFeedbackForChatflow - bad body")
        if self.quirks.feedback_checked:
            message = next((m for m in self.messages if m["id"] == body.get("messageId")), None)
            if message is None:
                return error(self.quirks, 404, f"Message with ID {body.get('messageId')} not found")
            if body.get("chatId") and message["chatId"] != body["chatId"]:
                return error(self.quirks, 400, f"Inconsistent chat ID: message with ID {message['id']} does not "
                                               f"belong to chat with ID {body['chatId']}")
        row = {"id": str(uuid.uuid4()), "chatflowid": request.path_params["id"], "content": None,
               **{k: body.get(k) for k in ("chatflowid", "chatId", "messageId", "rating", "content") if k in body},
               "createdDate": "2026-11-25T10:00:00.000Z"}
        self.feedback[row["id"]] = row
        return json_response(row)

    async def update_feedback(self, request: Request) -> Response:
        body = await request.json()
        row = self.feedback.get(request.path_params["id"])
        if row is None:
            if self.quirks.feedback_checked:
                return error(self.quirks, 404, f"Feedback with ID {request.path_params['id']} not found")
            return json_response({"status": "OK"})  # an UPDATE of no row
        row.update({k: body[k] for k in ("rating", "content") if isinstance(body, dict) and k in body})
        return json_response({"status": "OK"})

    async def list_feedback(self, request: Request) -> Response:
        chat_id = request.query_params.get("chatId")
        return json_response([row for row in self.feedback.values()
                              if row["chatflowid"] == request.path_params["id"]
                              and (chat_id is None or row.get("chatId") == chat_id)])

    async def attachments(self, request: Request) -> Response:
        flow = self.chatflows.get(request.path_params["chatflowId"])
        chat_id = request.path_params["chatId"]
        if flow is None:
            return error(self.quirks, 404, f"Chatflow {request.path_params['chatflowId']} not found")
        config = (flow.chatbot_config or {}).get("fullFileUpload") or {}
        if not config.get("status"):
            return error(self.quirks, 500, "Error: attachmentService.createAttachment - File upload is not enabled "
                                           "for this chatflow")
        allowed = str(config.get("allowedUploadFileTypes") or "").split(",")
        answer = []
        async with request.form() as form:
            for upload in form.getlist("files"):
                if isinstance(upload, str):
                    continue
                mime = upload.content_type or "application/octet-stream"
                if mime not in allowed:
                    return error(self.quirks, 500, f"Error: attachmentService.createAttachment - File type '{mime}' "
                                                   f"is not allowed. Allowed types: {', '.join(allowed)}")
                content = await upload.read()
                self.files[(flow.id, chat_id, upload.filename or "file")] = (content, mime)
                answer.append({"name": upload.filename, "mimeType": mime, "size": len(content),
                               "content": content.decode("utf-8", "replace")})
        return json_response(answer)

    async def upsert(self, request: Request) -> Response:
        async with request.form() as form:
            files = [f for f in form.getlist("files") if not isinstance(f, str)]
            chat_id = str(form.get("chatId") or "")
            for upload in files:
                self.files[(request.path_params["id"], chat_id, upload.filename or "file")] = (
                    await upload.read(), upload.content_type or "application/octet-stream")
        added = [{"pageContent": f.filename, "metadata": {"chatId": chat_id}} for f in files]
        return json_response({"numAdded": len(files), "numDeleted": 0, "numUpdated": 0, "numSkipped": 0,
                              "addedDocs": added})

    async def upload_file(self, request: Request) -> Response:
        query = request.query_params
        flow_id, chat_id, name = query.get("chatflowId"), query.get("chatId"), query.get("fileName")
        if not flow_id or not chat_id or not name:
            return PlainTextResponse("Invalid file path", 500)
        found = self.files.get((flow_id, chat_id, name))
        if found is None:
            if self.quirks.missing_file_500:
                return error(self.quirks, 500, "Error: streamStorageFile")
            return PlainTextResponse(f"File {name} not found", 404)
        # Flowise sends no Content-Type for these: only the disposition (content-disposition's own form).
        return Response(found[0], headers={"Content-Disposition": f'attachment; filename="{name}"'})
