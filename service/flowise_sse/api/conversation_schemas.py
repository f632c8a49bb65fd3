"""Bodies and answers of the conversation's side routes (`routes/conversation.py`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .schemas import CHAT_ID_PATTERN

# Flowise's message and feedback ids are UUIDs; anything else never reaches one of its URLs.
FLOWISE_ID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
Rating = Literal["THUMBS_UP", "THUMBS_DOWN"]


class ChatbotConfig(BaseModel):
    """Flowise's public chatbot config, as its embed reads it, without what is not for the public
    (`allowedOrigins`, which 2.x still returns; the chatflow's `flowData`)."""

    model_config = ConfigDict(extra="allow")
    welcomeMessage: str | None = None
    starterPrompts: Any = Field(None, description='Flowise\'s own shape: `{"0": {"prompt": "..."}, ...}`')
    uploads: dict[str, Any] | None = Field(
        None, description="The upload policy: isImageUploadAllowed, imgUploadSizeAndTypes, isSpeechToTextEnabled, "
        "isRAGFileUploadAllowed, fileUploadSizeAndTypes, ...")
    chatFeedback: Any = Field(None, description="`{status}`: thumbs up/down offered")
    leads: Any = None
    fullFileUpload: Any = Field(None, description="`{status, allowedUploadFileTypes}`: attachments for `file:full`")
    isTTSEnabled: bool | None = Field(None, description="Text-to-speech is on (Flowise 3.x)")
    startInputType: str | None = Field(None, description="An Agentflow V2's start: chatInput or formInput")
    formTitle: str | None = None
    formDescription: str | None = None
    formInputTypes: list[dict[str, Any]] | None = Field(
        None, description="An Agentflow V2 form start's inputs (`{type, label, name, addOptions}`), the start "
        "node's own; send their values as `form`")


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chatId: str = Field(pattern=CHAT_ID_PATTERN)
    messageId: str = Field(pattern=FLOWISE_ID_PATTERN, description="The answer's `chatMessageId` (in `end`)")
    rating: Rating
    content: str | None = Field(None, max_length=10_000)


class FeedbackUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chatId: str = Field(pattern=CHAT_ID_PATTERN, description="The chat the feedback is on (it must be this key's)")
    rating: Rating | None = None
    content: str | None = Field(None, max_length=10_000)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    chatId: str | None = None
    messageId: str | None = None
    rating: str | None = None
    content: str | None = None


class Attachment(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    mimeType: str | None = None
    size: int | None = None
    content: str | None = Field(None, description="The extracted text: send it as an upload of type file:full")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    role: str | None = Field(None, description="userMessage or apiMessage")
    content: str | None = None
    chatId: str | None = None
