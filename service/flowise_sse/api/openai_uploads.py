"""Images and audio from OpenAI requests, as Flowise `uploads`, within the chatflow's upload policy.

Both OpenAI APIs carry them as content parts of a user message: Chat Completions' `image_url`
and `input_audio`, the Responses API's `input_image` and `input_audio`. An image is a URL
(Flowise's `url` upload: Flowise hands the URL to the model) or a data URI (a `file` upload:
Flowise stores it under the chat and hands its base64 to the model); audio is base64 (an `audio`
upload: the chatflow's speech-to-text turns it into the question).

Flowise drops an upload its chatflow does not take without a word, so the gateway asks first:
the chatflow's `public-chatbotConfig` says whether it takes images (`isImageUploadAllowed`,
with types and a size per `imgUploadSizeAndTypes`) and audio (`isSpeechToTextEnabled`); a request
it would drop is a 400 naming that policy. So is audio in a format Flowise's speech to text does
not read: from 1.8 it transcribes webm, mp4 and ogg only (buildChatflow), other audio would
reach the model as an empty question.

Each upload is the same `Upload` model the prediction routes take (`upstream/prediction_inputs.py`),
checked by its rules (`Upload.problem`), so both APIs send Flowise the same things.
"""

from __future__ import annotations

import binascii
import mimetypes
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from ..errors import BadRequest, PayloadTooLarge
from ..upstream.flowise_client import FlowiseClient
from ..upstream.prediction_inputs import Upload

_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^;,]*)*?);base64,", re.ASCII)
# `input_audio.format` values Flowise's speech to text reads (it looks at the mime alone), as
# those mimes. OpenAI's own wav and mp3 are not among them.
_AUDIO_MIMES = {"webm": "audio/webm", "ogg": "audio/ogg", "mp4": "audio/mp4", "m4a": "audio/mp4"}
_MB = 1024 * 1024
# A URL's last path segment kept as the upload's name when it is a plain file name.
_PLAIN_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]{1,200}")


@dataclass(frozen=True, slots=True)
class Media:
    """An image or audio part as a Flowise upload, and its size in bytes (decoded; 0 for a URL)."""

    upload: Upload
    size: int


class UploadRefused(BadRequest):
    """An image or audio part the gateway or the chatflow cannot take; `param` names it (OpenAI's field)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def image_upload(url: str, number: int, where: str, param: str | None = None) -> Media:
    """An image part's URL or data URI as a Flowise upload (`number`: its place in the request;
    `where`: the part, for messages; `param`: the field to name, `where` by default)."""
    param = param or where
    if url.startswith("data:"):
        mime, size = _data_uri(url, where, param)
        if not mime.startswith("image/"):
            raise UploadRefused(f"{where} is a {mime} data URI, not an image", param)
        return Media(_upload(where, param, data=url, type="file", name=f"image-{number}{_extension(mime)}",
                             mime=mime), size)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UploadRefused(f"{where} must be an http(s) URL or a base64 data URI", param)
    name = parts.path.rsplit("/", 1)[-1]
    if not _PLAIN_NAME.fullmatch(name) or ".." in name:  # Flowise keeps it as the file's name
        name = f"image-{number}"
    mime = mimetypes.guess_type(name)[0] or "image/png"  # Flowise's own default for a URL upload
    return Media(_upload(where, param, data=url, type="url", name=name, mime=mime), 0)


def audio_upload(data: str, audio_format: str, number: int, where: str, param: str | None = None) -> Media:
    """An `input_audio` part (base64 and its format) as a Flowise `audio` upload."""
    param = param or where
    mime = _AUDIO_MIMES.get(audio_format.lower())
    if mime is None:
        raise UploadRefused(f"{where}.format must be one of {', '.join(_AUDIO_MIMES)}: Flowise's speech to text "
                            "reads no other audio", param)
    uri = f"data:{mime};base64,{data}"
    _, size = _data_uri(uri, where, param)
    return Media(_upload(where, param, data=uri, type="audio", name=f"audio-{number}.{audio_format.lower()}",
                         mime=mime), size)


def _upload(where: str, param: str, **fields: str) -> Upload:
    """The upload, held to the same rules as the prediction routes' `uploads`."""
    try:
        upload = Upload.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UploadRefused(f"{where}: {'.'.join(map(str, first.get('loc', ())))} {first.get('msg')}", param) from None
    if (problem := upload.problem()) is not None:
        raise UploadRefused(f"{where}: {problem}", param)
    return upload


async def checked_uploads(flowise: FlowiseClient, chatflow_id: str, media: list[Media],
                          max_bytes: int, param: str) -> list[Upload]:
    """The uploads as Flowise takes them, once the chatflow's policy and the size cap allow them
    all; otherwise a 400 naming the policy and `param` (or 413 over `max_bytes` in all)."""
    if not media:
        return []
    total = sum(part.size for part in media)
    if total > max_bytes:
        raise PayloadTooLarge(f"the request's images and audio are {total} bytes, over the limit of {max_bytes} "
                              "(FLOWISE_SSE_MAX_UPLOAD_BYTES)")
    policy = await flowise.upload_policy(chatflow_id)
    for part in media:
        if part.upload.type == "audio":
            if policy.get("isSpeechToTextEnabled") is not True:
                raise UploadRefused(
                    f"chatflow {chatflow_id} does not take audio: its upload policy (Flowise's chatbot config) "
                    "has isSpeechToTextEnabled false; turn on its Speech to Text", param)
            continue
        if policy.get("isImageUploadAllowed") is not True:
            raise UploadRefused(
                f"chatflow {chatflow_id} does not take images: its upload policy (Flowise's chatbot config) has "
                "isImageUploadAllowed false; turn on Allow Image Uploads on its chat model", param)
        _check_image(policy, part, chatflow_id, param)
    return [part.upload for part in media]


def _check_image(policy: dict[str, Any], part: Media, chatflow_id: str, param: str) -> None:
    """Against `imgUploadSizeAndTypes` ({fileTypes, maxUploadSize in MB} entries), when given."""
    rules = [rule for rule in policy.get("imgUploadSizeAndTypes") or () if isinstance(rule, dict)]
    if not rules or part.upload.type != "file":  # a URL's type and size are Flowise's model's business
        return
    types = {t for rule in rules for t in rule.get("fileTypes") or () if isinstance(t, str) and t}
    mime = part.upload.mime
    if types and mime not in types:
        raise UploadRefused(f"chatflow {chatflow_id} takes images of types {', '.join(sorted(types))} "
                            f"(its upload policy), not {mime}", param)
    sizes = [rule["maxUploadSize"] for rule in rules if isinstance(rule.get("maxUploadSize"), int | float)]
    if sizes and part.size > max(sizes) * _MB:
        raise UploadRefused(f"chatflow {chatflow_id} takes images up to {max(sizes):g} MB (its upload policy); "
                            f"{part.upload.name} is {part.size} bytes", param)


def _data_uri(uri: str, where: str, param: str) -> tuple[str, int]:
    """(mime, decoded size) of a base64 data URI, whose base64 is checked whole."""
    match = _DATA_URI.match(uri)
    if match is None:
        raise UploadRefused(f"{where} must be a base64 data URI (data:<type>;base64,<data>)", param)
    try:
        data = binascii.a2b_base64(uri[match.end():], strict_mode=True)
    except binascii.Error:
        raise UploadRefused(f"{where}: the data URI's base64 is not valid", param) from None
    if not data:
        raise UploadRefused(f"{where}: the data URI is empty", param)
    return match["mime"].lower(), len(data)


def _extension(mime: str) -> str:
    return {"image/jpeg": ".jpg"}.get(mime) or mimetypes.guess_extension(mime) or ""
