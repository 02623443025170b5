"""Django's upload handlers, reading a multipart body in larger pieces.

Django reads an upload's body in its handlers' chunk size, 64 KiB by default. Under
gunicorn each read also copies what gunicorn has already received beyond it (up to 1 MiB,
gunicorn/http/unreader.py), so a photo of a few MB was copied dozens of times over: with
1 MiB pieces it is copied about once. FILE_UPLOAD_HANDLERS (settings.py) names these.
"""

from django.core.files import uploadhandler

CHUNK_SIZE = 1024 * 1024


class MemoryFileUploadHandler(uploadhandler.MemoryFileUploadHandler):
    chunk_size = CHUNK_SIZE


class TemporaryFileUploadHandler(uploadhandler.TemporaryFileUploadHandler):
    chunk_size = CHUNK_SIZE
