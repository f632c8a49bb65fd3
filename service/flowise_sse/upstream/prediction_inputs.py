"""The parts of a prediction beyond the question, under Flowise's own names, validated.

Shared by the HTTP API (they are its request schemas) and the library (`Prediction.build`), so a
body refused on one is refused on the other with the same words. What is checked is what would
otherwise fail late and obscurely inside Flowise, or reach its disk: an upload's name becomes a
file name under the chat's folder (1.6.2 joins it to the path unchecked), its data URI's type
must be the `mime` it claims (3.x refuses a mismatch only after the stream has begun).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UploadType = Literal["file", "url", "audio", "file:full", "file:rag"]
# Types whose `data` is the file itself, as a base64 data URI, that Flowise stores under the chat.
STORED_TYPES = ("file", "audio", "file:rag")

MIME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
# An Agentflow node's id (`humanInputAgentflow_0`), or a chatflow node's (`pineconeUpsert_0`).
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"
# What a browser's MediaRecorder writes too: `data:audio/webm;codecs=opus;base64,...`.
_DATA_URI = re.compile(r"data:([^;,]{1,255})((?:;[^;,]{1,255})*?);base64,")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.")
MAX_URL_CHARS = 8192
MAX_UPLOADS = 100


class Upload(BaseModel):
    """One of `uploads`: an image, an audio recording or a file, as Flowise's embed sends it."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="`file`, `audio`, `file:rag`: a base64 data URI (`data:<mime>;base64,...`) "
                      "whose type is `mime`; `url`: an http(s) URL of an image; `file:full`: the text that "
                      "`POST /v1/chatflows/{id}/attachments` extracted.")
    type: UploadType = Field(description="file (an image for a vision model, or a file stored under the chat), "
                             "url, audio (speech-to-text makes it the question), file:full, file:rag")
    name: str = Field(min_length=1, max_length=255, description="A file name: no `/`, `\\`, `..` or control "
                      "characters. Flowise stores `file`, `audio` and `file:rag` uploads under it, in the chat's "
                      "folder.")
    mime: str = Field(pattern=MIME_PATTERN, description="The file's media type, e.g. image/png, audio/webm")

    def problem(self) -> str | None:
        """What makes this upload unsendable, beyond its fields' own shapes: its name, its data
        for its type. A 400 rather than a 422: the document's schema cannot state these."""
        if _UNSAFE_NAME.search(self.name):
            return "name must be a plain file name: no /, \\, .. or control characters"
        if self.type in STORED_TYPES:
            found = _DATA_URI.match(self.data)
            if found is None:
                return f"data of a {self.type} upload must be a base64 data URI: data:<mime>;base64,<bytes>"
            if found[1].lower() != self.mime.lower():
                return f"mime is {self.mime} but the data URI says {found[1][:100]}"
            if not _BASE64.fullmatch(self.data, found.end()):
                return "data is not valid base64 after its data: prefix"
        elif self.type == "url" and (
                not re.match(r"https?://[^\s/?#]", self.data, re.IGNORECASE) or len(self.data) > MAX_URL_CHARS
                or any(c.isspace() or ord(c) < 32 for c in self.data)):
            return f"data of a url upload must be an http(s) URL of at most {MAX_URL_CHARS} characters, without spaces"
        if self.type == "audio" and not self.mime.lower().startswith("audio/"):
            return "an audio upload's mime must be audio/..."
        return None


class HumanInput(BaseModel):
    """The reply to a run stopped for human input (3.x Agentflow V2: a Human Input node, or an
    Agent node's tool approval)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["proceed", "reject"]
    startNodeId: str | None = Field(None, pattern=NODE_ID_PATTERN, description="The stopped node (the `action`'s "
                                    "`data.nodeId`); omitted: the last node that stopped")
    feedback: str | None = Field(None, description="Text for the node (a Human Input node's feedback)")


class Action(BaseModel):
    """An `action` Flowise sent (2.x sequential agents' approval), sent back with the choice."""

    model_config = ConfigDict(extra="allow")
    id: str | None = Field(None, max_length=200)
    mapping: dict[str, Any] | None = None
    elements: list[dict[str, Any]] | None = None
    data: dict[str, Any] | None = None


def dumped(model: BaseModel) -> dict[str, Any]:
    """A model as the dict Flowise gets: no `null` for what was not given."""
    return model.model_dump(exclude_none=True)
