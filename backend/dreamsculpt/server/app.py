"""The HTTP API (FastAPI): routes, and the guards in front of them.

Guards, outermost first: a body-size limit (413), a loopback-only check of the `Host` and
`Origin` headers (403: no web page can drive the backend, by CSRF or DNS rebinding), then the
bearer token on every route but `GET /health` (401).
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at run time.
import json
import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Path, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import DreamsculptError
from ..model_store import (
    NAMES,
    CachedModel,
    cache_dir,
    cached_model,
    list_models,
    models_for,
)
from ..model_store import remove as remove_model
from ..tasks import public_error
from .dispatcher import Busy, Dispatcher
from .model_downloads import ModelDownloads
from .schemas import (
    JOB_ID_PATTERN,
    Health,
    ImageInfo,
    JobList,
    JobRequest,
    JobState,
    JobStatus,
    ModelList,
    ModelProgress,
    ModelRemoved,
    ModelStatus,
    Released,
)
from .settings import ServerSettings, is_loopback
from .store import DOWNLOADS, LINKS, MAX_VIEWS, UnknownImage
from .uploads import MEDIA_TYPES as IMAGE_TYPES
from .uploads import decode_depth, decode_image

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id, e.g. 20261121-093512-4f2a9c.")]
ViewIndex = Annotated[str, Path(pattern=r"^[0-9]{2}$", description=f"00 (the reference) to {MAX_VIEWS - 1:02d}.")]
FrameIndex = Annotated[str, Path(pattern=r"^[0-9]{4}$", description="0000 (the start frame) onwards.")]
ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="A model, e.g. sd (GET /models "
                                                                                   "lists them).")]
bearer = HTTPBearer(auto_error=False, description="The token `dreamsculpt token` prints.")
MEDIA_TYPES = {".png": "image/png", ".gif": "image/gif", ".json": "application/json",
               ".ply": "application/octet-stream", ".glb": "model/gltf-binary", ".obj": "model/obj",
               ".mtl": "model/mtl", ".mp4": "video/mp4"}


def _error(code: int, message: str, headers: dict | None = None) -> Response:
    body = json.dumps({"detail": message}).encode()
    return Response(body, code, headers=headers, media_type="application/json")


class Guards:
    """Pure ASGI middleware: body size, Host and Origin. Cheap, and runs before any parsing."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        limit = self.settings.max_body_bytes
        if int(headers.get("content-length", "0") or 0) > limit:
            return await self._too_large()(scope, receive, send)
        if "content-length" in headers:  # h11 holds the client to the length it declared
            return await self.app(scope, receive, send)
        # No length (chunked): read the body here, counting, then hand it on whole.
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await self._too_large()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> Response:
        mib = self.settings.max_body_bytes / 2**20
        return _error(413, f"The request body is over the {mib:g} MiB limit.")

    def _refusal(self, headers: dict) -> Response | None:
        try:
            if "content-length" in headers:
                int(headers["content-length"])
        except ValueError:
            return _error(400, "Content-Length is not a number.")
        origin = headers.get("origin")
        if origin is not None and not _loopback_url(origin):
            return _error(403, f"Requests from web pages ({origin}) are refused: the Dreamsculpt backend "
                               "only answers local programs such as the Blender add-on.")
        if self.settings.loopback_only and not _loopback_url("http://" + headers.get("host", "")):
            scheme = "https" if self.settings.tls else "http"   # the Host header has no scheme: only the hint does
            return _error(403, "The Host header does not name this machine (localhost or 127.0.0.1); "
                               f"use {scheme}://127.0.0.1:<port>.")
        return None


def _loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return bool(host) and is_loopback(host)


def create_app(dispatcher: Dispatcher, token: str, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="Dreamsculpt", version=__version__,
                  description="Local job server of Dreamsculpt: text or images to coloured 3D meshes. "
                              "Every route but /health needs `Authorization: Bearer <token>` "
                              "(`dreamsculpt token` prints it). Request bodies are limited to "
                              f"{settings.max_body_bytes / 2**20:g} MiB (413).",
                  # The schema needs the token like everything else; no /docs (it loads from a CDN).
                  openapi_url=None, docs_url=None, redoc_url=None)
    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                "Missing or wrong token: send 'Authorization: Bearer <token>' with the token "
                                "that `dreamsculpt token` prints.", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [public_error(e) for e in exc.errors()]
        lines = []
        for e in errors:
            where = ".".join(str(part) for part in e["loc"] if part not in ("body", "path", "query"))
            lines.append(f"{where or 'body'}: {e['msg']}")
        return JSONResponse({"detail": errors, "message": "; ".join(lines)}, status_code=422)

    def found(job: JobStatus | None, job_id: str) -> JobStatus:
        if job is None:
            raise HTTPException(404, f"No job {job_id}: GET /jobs lists the jobs there are.")
        return job

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/health", response_model=Health, tags=["server"])
    def health() -> dict:
        """Version, device, library versions, loaded models and queue length. No token needed."""
        return dispatcher.health()

    @app.post("/jobs", response_model=JobStatus, status_code=201, dependencies=auth, tags=["jobs"])
    def submit(request: JobRequest) -> JobStatus:
        """Queue a job; it runs after those before it (FIFO). The image kinds name an image
        uploaded with POST /images."""
        try:
            return dispatcher.submit(request)
        except Busy as exc:
            raise HTTPException(503, str(exc)) from exc
        except UnknownImage as exc:
            raise RequestValidationError([{"loc": ("body", "image"), "msg": str(exc), "type": "value_error"}]) from exc

    binary = {"schema": {"type": "string", "format": "binary"}}

    @app.post("/images", response_model=ImageInfo, status_code=201, dependencies=auth, tags=["images"],
              openapi_extra={"requestBody": {"required": True, "content": {t: binary for t in IMAGE_TYPES}}},
              responses={415: {"description": "Not PNG, JPEG or WebP"}, 422: {"description": "Not a usable image"}})
    async def upload(request: Request, depth: bool = False) -> ImageInfo:
        """Upload a reference image (the raw file as the body). It is stored as PNG (alpha kept)
        for a week; the returned `image` id goes into image jobs. With `?depth=true`: a depth
        map, a 16-bit grey PNG in millimetres kept as it is (a scene walk's `depth_image`)."""
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in IMAGE_TYPES:
            raise HTTPException(415, f"Send the image as the body with Content-Type {', '.join(IMAGE_TYPES)} "
                                     f"(got {media_type or 'none'}).")
        try:
            decoded = await run_in_threadpool(decode_depth if depth else decode_image, await request.body())
        except DreamsculptError as exc:
            return JSONResponse({"detail": str(exc), "message": str(exc)}, status_code=422)
        await run_in_threadpool(dispatcher.store.images.add, decoded.sha256, decoded.png)
        return ImageInfo(image=decoded.sha256, width=decoded.width, height=decoded.height,
                         has_alpha=decoded.has_alpha)

    @app.get("/jobs", response_model=JobList, dependencies=auth, tags=["jobs"])
    def list_jobs() -> JobList:
        """Every job in the store, oldest first."""
        return JobList(jobs=dispatcher.jobs())

    @app.get("/jobs/{job_id}", response_model=JobStatus, dependencies=auth, tags=["jobs"])
    def get_job(job_id: JobId) -> JobStatus:
        return found(dispatcher.status(job_id), job_id)

    @app.post("/jobs/{job_id}/cancel", response_model=JobStatus, dependencies=auth, tags=["jobs"])
    def cancel(job_id: JobId) -> JobStatus:
        """Stop a queued or running job (a running one stops before its next step and keeps a
        checkpoint). Cancelling a finished job changes nothing."""
        return found(dispatcher.cancel(job_id), job_id)

    @app.delete("/jobs/{job_id}", status_code=204, dependencies=auth, tags=["jobs"])
    def delete(job_id: JobId) -> Response:
        """Delete a job and its files; a running job is cancelled first."""
        try:
            if not dispatcher.delete(job_id):
                found(None, job_id)
        except Busy as exc:
            raise HTTPException(409, str(exc)) from exc
        return Response(status_code=204)

    @app.post("/models/release", response_model=Released, dependencies=auth, tags=["server"])
    def release() -> Released:
        """Stop the worker process, giving the memory (VRAM) of loaded models back."""
        try:
            return Released(released=dispatcher.release_models())
        except Busy as exc:
            raise HTTPException(409, str(exc)) from exc

    _add_model_routes(app, dispatcher, auth)

    def send(job_id: str, name: str) -> Response:
        job = found(dispatcher.status(job_id), job_id)
        path = dispatcher.store.download_path(job_id, name)
        if path is None:
            what = "no preview yet" if name == "preview.png" else f"no {name}"
            raise HTTPException(404, f"Job {job_id} has {what} (it is {job.status.value}).")
        if name == "preview.png":  # small and replaced while running: send the bytes read at once
            return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-store"})
        if name in LINKS:   # result.obj names result.mtl, which names texture.png: as saved
            return Response(dispatcher.store.linked_download(job_id, name, path), media_type=MEDIA_TYPES[name[name.rindex("."):]],
                            headers={"Content-Disposition": f'attachment; filename="{job_id}-{name}"'})
        return FileResponse(path, media_type=MEDIA_TYPES[name[name.rindex("."):]], filename=f"{job_id}-{name}")

    def named(name: str):
        def download(job_id: JobId) -> Response:
            return send(job_id, name)
        return download

    def view(job_id: JobId, index: ViewIndex) -> Response:
        return send(job_id, f"view_{index}.png")

    def frames(folder: str):
        def frame(job_id: JobId, index: FrameIndex) -> Response:
            path = dispatcher.store.frame_path(job_id, folder, index)
            if path is None:
                raise HTTPException(404, f"Job {job_id} has no {folder}/{index}.png (yet).")
            return FileResponse(path, media_type="image/png", filename=f"{job_id}-{folder}-{index}.png")
        return frame

    for name in DOWNLOADS:   # the novel views share one route
        if not name.startswith("view_"):
            _add_download(app, f"/jobs/{{job_id}}/{name}", named(name), name, auth)
    _add_download(app, "/jobs/{job_id}/view_{index}.png", view, "view_NN.png", auth)
    _add_download(app, "/jobs/{job_id}/frames/{index}.png", frames("frames"), "frames/NNNN.png", auth)
    _add_download(app, "/jobs/{job_id}/depth/{index}.png", frames("depth"), "depth/NNNN.png", auth)
    app.add_middleware(Guards, settings=settings)
    return app


SUMMARIES = {"preview.png": "The latest preview while the job runs (then its last one)",
             "views.png": "Front, right, back and left views of the result",
             "run.json": "What the run did: settings, timings, mesh size",
             "input.png": "The reference image of an image job, as uploaded (PNG)",
             "reference.png": "The reference image as the engine used it: resampled, square, RGBA",
             "views.json": "Novel views: each view's file and camera, and the placement",
             "novel_views.png": "Every novel view on one sheet",
             "view_NN.png": "One novel view (view_00 is the reference)",
             "result.glb": "The asset: UV-textured mesh with normals and a PBR material, textures embedded",
             "result.ply": "The welded mesh with vertex colours, normals and per-corner UVs (Z up)",
             "result.obj": "The UV mesh as OBJ (Z up; made with mesh.obj); it uses result.mtl",
             "result.mtl": "The OBJ's material; it uses texture.png (and normal.png)",
             "texture.png": "The base-colour texture",
             "normal.png": "The tangent-space normal map (when asked for)",
             "scene.glb": "A scene walk's mesh with vertex colours (glTF, Y up)",
             "scene.ply": "A scene walk's mesh with vertex colours (Z up, the cameras' world)",
             "walk.mp4": "A scene walk's frames as a video",
             "walk.gif": "A scene walk's frames as a GIF (when no video encoder is installed)",
             "cameras.json": "A scene walk's cameras, one Blender camera per frame",
             "frames/NNNN.png": "One frame of a scene walk",
             "depth/NNNN.png": "One frame's view depth, 16-bit PNG in millimetres (0: none)"}


def _add_download(app: FastAPI, path: str, download, name: str, auth) -> None:
    media_type = MEDIA_TYPES[name[name.rindex("."):]]
    app.add_api_route(path, download, methods=["GET"], dependencies=auth, tags=["files"],
                      summary=SUMMARIES.get(name, f"The result, {name}"), response_class=Response,
                      responses={200: {"content": {media_type: {}}}, 404: {"description": "Not there (yet)"}})



def _add_model_routes(app: FastAPI, dispatcher: Dispatcher, auth) -> None:
    """GET /models, POST /models/{name}/download and DELETE /models/{name}: the registry of
    model_store.py against the server's Hugging Face cache; downloads run in this process."""
    downloads = ModelDownloads()

    def known(name: str) -> None:
        if name not in NAMES:
            raise HTTPException(404, f"No model {name!r}: the server knows {', '.join(NAMES)} (GET /models "
                                     "lists them).")

    def status(model: CachedModel) -> ModelStatus:
        entry, latest = model.entry, downloads.latest(model.entry.name)
        running = latest is not None and latest.running
        return ModelStatus(name=entry.name, repo=entry.repo, serves=entry.serves, needs=list(entry.needs),
                           licence=entry.licence, gated=entry.gated, state=model.state,
                           bytes_on_disk=model.bytes_on_disk, bytes_total=model.bytes_total, path=str(model.path),
                           download=ModelProgress(done=latest.done, total=latest.total) if running else None,
                           error=latest.error if latest is not None else None)

    def in_use(name: str) -> str | None:
        """Why `name` cannot be removed now (None: it can)."""
        by = downloads.downloading(name)
        if by is not None:
            return f"Model {name} is downloading{'' if by == name else f' (for {by})'}: remove it once that ends."
        for job in dispatcher.jobs():
            if job.status is JobState.running and name in models_for(job.request):
                return f"Job {job.id} is running with model {name}: wait for it to end, or cancel it, then remove it."
        return None

    @app.get("/models", response_model=ModelList, dependencies=auth, tags=["models"])
    def models() -> ModelList:
        """The models the defaults load (`dreamsculpt models list`): present, partial or missing in
        the server's Hugging Face cache, their size, and the download this server runs of each."""
        return ModelList(models=[status(model) for model in list_models()], cache=str(cache_dir()))

    @app.post("/models/{name}/download", response_model=ModelStatus, status_code=202, dependencies=auth,
              tags=["models"], responses={404: {"description": "No such model"}})
    def download(name: ModelName) -> ModelStatus:
        """Download a model (and what it needs) in the background; GET /models shows its bytes.
        Asking again while it runs changes nothing; a complete copy downloads nothing."""
        known(name)
        downloads.start(name)
        return status(cached_model(name))

    @app.delete("/models/{name}", response_model=ModelRemoved, dependencies=auth, tags=["models"],
                responses={404: {"description": "No such model"},
                           409: {"description": "A running job uses it, or it is downloading"}})
    def remove(name: ModelName) -> ModelRemoved:
        """Delete a model from the server's cache, freeing its space (not what it needs: those
        serve other defaults too). A job that needs it later downloads it again."""
        known(name)
        refusal = in_use(name)
        if refusal is not None:
            raise HTTPException(409, refusal)
        return ModelRemoved(name=name, freed_bytes=remove_model(name))
