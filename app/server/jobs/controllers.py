"""Pre-generation jobs over HTTP, for admin keys: start, follow, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from app.server.auth import actor, require_scope
from app.server.errors import problems
from app.server.jobs.schemas import MAX_JOB_BODY_BYTES, JobCreate
from app.server.jobs.service import JobService, JobView
from app.server.params import IdPath


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    guards = [require_scope("admin")]

    @post(
        "/",
        status_code=202,
        summary="Start pre-generating a placement's banners (or resume the same job)",
        opt=problems("conflict"),
        request_max_body_size=MAX_JOB_BODY_BYTES,
    )
    async def start(
        self, data: JobCreate, jobs: JobService, request: Request[Any, Any, Any]
    ) -> Response[JobView]:
        view = await jobs.start(data, actor(request))
        return Response(view, status_code=202, headers={"Location": f"/v1/jobs/{view.id}"})

    @get("/", summary="Jobs, newest first")
    async def list_jobs(
        self,
        jobs: JobService,
        limit: Annotated[int, Parameter(ge=1, le=500, description="how many")] = 50,
    ) -> list[JobView]:
        return await jobs.list(limit)

    @get(
        "/{job_id:str}", summary="A job's state, progress, rate and ETA", opt=problems("not-found")
    )
    async def fetch(self, job_id: IdPath, jobs: JobService) -> JobView:
        return await jobs.get(job_id)

    @delete(
        "/{job_id:str}",
        status_code=202,
        summary="Cancel a job (it stops after its current batch; a finished job is unchanged)",
        opt=problems("not-found"),
    )
    async def cancel(self, job_id: IdPath, jobs: JobService) -> JobView:
        return await jobs.cancel(job_id)
