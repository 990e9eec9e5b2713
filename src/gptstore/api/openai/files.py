"""`/v1/files` (OpenAI's Files API over the blob store) and `/api/files/{id}/report`.

An upload is parsed as it arrives (python-multipart's push parser, not a form read
into memory or a spooled temp file): the file part streams through the byte screen
(catalog/screen.py: a training extension, UTF-8 text, bounded lines and JSON nesting)
straight into a blob writer, which refuses it with 413 the moment it passes
`GPTSTORE_MAX_UPLOAD_BYTES`. A refused upload leaves no blob and no row.
Parsing, hashing and the validation report run on worker threads, never on the event
loop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from gptstore.api.auth import audit
from gptstore.api.deps import CatalogDep, OwnerDep, WriteOwnerDep
from gptstore.api.openai.protocol import FileDeleted, FileList, FileObject
from gptstore.api.store.schemas import FileReport
from gptstore.catalog.files import FileInfo, check_filename, check_upload_purpose
from gptstore.catalog.screen import UploadScreen
from gptstore.errors import InvalidRequest, NotFound, PayloadTooLarge

router = APIRouter(tags=["openai"])
store_router = APIRouter(tags=["store"])

#: multipart framing allowed on top of the file itself before Content-Length is refused
FRAMING_BYTES = 64 * 1024
#: text fields (purpose) are tiny; anything longer is not what we asked for
MAX_FIELD_BYTES = 1024


def unix(moment: datetime) -> int:
    """Seconds since the epoch (SQLite hands datetimes back without their UTC zone)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _issue(error: Any) -> str:
    """One error of a file's report, with its line where it has one."""
    if not isinstance(error, dict):
        return str(error)
    message = str(error.get("message", error))
    return f"line {error['line']}: {message}" if error.get("line") else message


def file_object(file: FileInfo) -> FileObject:
    details = None
    if file.status == "error" and file.report:
        errors = file.report.get("errors") or []
        details = "; ".join(_issue(e) for e in errors[:3]) or None
        if details and len(errors) > 3:
            details += f"; and {len(errors) - 3} more (GET /api/files/{file.id}/report)"
    return FileObject(id=file.id, bytes=file.bytes, created_at=unix(file.created_at),
                      filename=file.filename, purpose=file.purpose,
                      status="error" if file.status == "error" else "processed",
                      status_details=details)


def owned(catalog: Any, file_id: str, owner: str) -> FileInfo:
    """The caller's file; another owner's answers exactly like a missing one."""
    file = catalog.files.get(file_id)
    if file.owner != owner:
        raise NotFound(f"file {file_id} does not exist; upload it first, or list files "
                       "with GET /v1/files", param="file_id")
    return file


class _Upload:
    """Callbacks of the multipart parser: the `file` part into a blob writer, text
    fields into a small dict."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._header = b""
        self._value = b""
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()
        self.got_file = False
        self.screen: UploadScreen | None = None

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_header_field": self._field,
                "on_header_value": self._hvalue, "on_header_end": self._header_end,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._name, self._is_file, self._text = None, False, bytearray()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        from python_multipart.multipart import parse_options_header

        if self._header.lower() == b"content-disposition":
            _, params = parse_options_header(self._value)
            self._name = params.get(b"name", b"").decode(errors="replace")
            if b"filename" in params:
                self._is_file = self._name == "file"
                if self._is_file:
                    if self.got_file:
                        raise InvalidRequest("send one file per upload", param="file")
                    self.filename = params[b"filename"].decode(errors="replace")
                    self.got_file = True
                    # the name is checked before any byte of the file is stored
                    self.screen = UploadScreen(check_filename(self.filename))
        self._header, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self.screen is not None
            piece = data[start:end]
            self.screen.feed(piece)
            self.writer.write(piece)
        elif self._name is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field {self._name} is too long", param=self._name)

    def _end(self) -> None:
        if self._name is not None and not self._is_file:
            self.fields[self._name] = self._text.decode(errors="replace")


@router.post("/files", response_model=FileObject, summary="Upload a file (multipart: file, "
             "purpose=fine-tune); a fine-tune file is checked on upload")
async def upload_file(request: Request, catalog: CatalogDep, owner: WriteOwnerDep
                      ) -> FileObject:
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    limit = request.app.state.settings.max_upload_bytes
    mime, params = parse_options_header(request.headers.get("content-type", ""))
    if mime != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest("send the file as multipart/form-data with the fields file "
                             "and purpose", param="file")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + FRAMING_BYTES:
        raise PayloadTooLarge(f"the upload is {int(length)} bytes, over the limit of {limit} "
                              "bytes (GPTSTORE_MAX_UPLOAD_BYTES); split the data",
                              param="file")
    with catalog.blobs.writer(max_bytes=limit) as writer:
        upload = _Upload(writer)
        parser = MultipartParser(params[b"boundary"], upload.callbacks())
        async for chunk in request.stream():
            if chunk:
                await asyncio.to_thread(parser.write, chunk)
        parser.finalize()
        if not upload.got_file or upload.filename is None:
            raise InvalidRequest("the upload has no `file` part; send the file in a field "
                                 "named file", param="file")
        purpose = check_upload_purpose(upload.fields.get("purpose"))
        filename = check_filename(upload.filename)
        assert upload.screen is not None
        upload.screen.finish()
        blob = await asyncio.to_thread(writer.commit)
    file = await asyncio.to_thread(catalog.files.add, blob.digest, blob.size,
                                   filename=filename, purpose=purpose, owner=owner)
    await asyncio.to_thread(audit, request, "upload", file.id,
                            {"filename": filename, "bytes": file.bytes})
    return file_object(file)


@router.get("/files", response_model=FileList, summary="List your files, newest first")
def list_files(catalog: CatalogDep, owner: OwnerDep, purpose: str | None = None,
               limit: int = Query(default=10_000, ge=1, le=10_000),
               order: str = Query(default="desc", pattern="^(asc|desc)$"),
               after: str | None = None) -> FileList:
    if after is not None:
        owned(catalog, after, owner)
    files, more = catalog.files.page(owner=owner, purpose=purpose, after=after, limit=limit,
                                     order=order)
    data = [file_object(f) for f in files]
    return FileList(data=data, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None, has_more=more)


@router.get("/files/{file_id}", response_model=FileObject, summary="One file")
def get_file(file_id: str, catalog: CatalogDep, owner: OwnerDep) -> FileObject:
    return file_object(owned(catalog, file_id, owner))


@router.get("/files/{file_id}/content", response_class=FileResponse,
            summary="The file's bytes")
def file_content(file_id: str, catalog: CatalogDep, owner: OwnerDep) -> FileResponse:
    file = owned(catalog, file_id, owner)
    media = "text/csv" if file.filename.endswith(".csv") else "application/octet-stream"
    return FileResponse(catalog.blobs.path(file.digest), media_type=media,
                        filename=file.filename)


@router.delete("/files/{file_id}", response_model=FileDeleted, summary="Delete a file")
def delete_file(file_id: str, catalog: CatalogDep, owner: WriteOwnerDep, request: Request
                ) -> FileDeleted:
    from gptstore.jobs.store import JobStore

    owned(catalog, file_id, owner)
    JobStore(catalog.db).check_file_unused(file_id)
    catalog.files.delete(file_id)
    audit(request, "delete", file_id)
    return FileDeleted(id=file_id)


@store_router.get("/files/{file_id}/report", response_model=FileReport,
                  summary="The validation report of a fine-tune file (gptstore data "
                  "validate), made on upload")
def file_report(file_id: str, catalog: CatalogDep, owner: OwnerDep) -> FileReport:
    file = owned(catalog, file_id, owner)
    if file.report is None:
        raise InvalidRequest(f"file {file_id} ({file.purpose}) has no validation report; "
                             "only fine-tune files are checked", param="file_id")
    return FileReport.model_validate({**file.report, "id": file.id, "filename": file.filename})
