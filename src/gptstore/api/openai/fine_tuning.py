"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning jobs API over the jobs service.

A translation only: the request's OpenAI shape (the `method` object or the deprecated
`hyperparameters`, `suffix`, `seed`, and gptstore's extensions sent as extra body
fields) becomes a `jobs.service.create_job` call; job rows become OpenAI objects.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from gptstore.api.auth import WritePrincipal, audit, owner_of
from gptstore.api.deps import CatalogDep, OwnerDep, WriteOwnerDep
from gptstore.api.openai.files import unix
from gptstore.api.openai.protocol import (
    CreateFineTuningJobRequest,
    FineTuneMethod,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    Hyperparameters,
    JobError,
    SupervisedMethod,
)
from gptstore.errors import InvalidRequest, NotFound
from gptstore.jobs.states import JobStatus
from gptstore.jobs.store import JobInfo, JobStore

router = APIRouter(tags=["openai"])


def job_object(job: JobInfo) -> FineTuningJob:
    hyper = Hyperparameters(**job.hyperparameters)
    running = job.status == JobStatus.RUNNING
    return FineTuningJob(
        id=job.id, created_at=unix(job.created_at),
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model if job.status == JobStatus.SUCCEEDED else None,
        finished_at=unix(job.finished_at) if job.finished_at else None,
        hyperparameters=hyper, model=job.model, organization_id=job.owner,
        result_files=job.result_files, seed=job.seed, status=job.status.value,
        trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=unix(job.estimated_finish) if running and job.estimated_finish
        else None,
        metadata=job.metadata, user_provided_suffix=job.suffix,
        method=FineTuneMethod(type="supervised", supervised=SupervisedMethod(
            hyperparameters=hyper)))


def _store(catalog: Any) -> JobStore:
    return JobStore(catalog.db)


def _owned(catalog: Any, job_id: str, owner: str) -> JobInfo:
    """The caller's job; another owner's answers exactly like a missing one."""
    job = _store(catalog).get(job_id)
    if job.owner != owner:
        raise NotFound(f"fine-tuning job {job_id} does not exist", param="fine_tuning_job_id")
    return job


def _hyperparameters(request: CreateFineTuningJobRequest) -> Hyperparameters:
    """From OpenAI's `method` object, or its deprecated top-level `hyperparameters`."""
    method = request.method
    if method is not None and method.type != "supervised":
        raise InvalidRequest(f"method.type {method.type!r} is not supported: gptstore "
                             "fine-tunes with the supervised method", param="method.type")
    from_method = method.supervised.hyperparameters if method and method.supervised else None
    if from_method is not None and request.hyperparameters is not None and \
            from_method != request.hyperparameters:
        raise InvalidRequest("hyperparameters and method.supervised.hyperparameters differ; "
                             "give them once, in method", param="hyperparameters")
    return from_method or request.hyperparameters or Hyperparameters()


@router.post("/fine_tuning/jobs", response_model=FineTuningJob,
             summary="Create a fine-tuning job (queued; a worker runs it)")
def create_job(request: CreateFineTuningJobRequest, catalog: CatalogDep,
               principal: WritePrincipal, http: Request) -> FineTuningJob:
    from gptstore.jobs.service import create_job as create

    if request.integrations:
        raise InvalidRequest("integrations are not supported: gptstore reports to no "
                             "outside service; read the job's events and result file",
                             param="integrations")
    owner = owner_of(principal)
    hyper = _hyperparameters(request)
    options = dict(request.model_extra or {})
    if request.adaptation is not None:
        options["method"] = request.adaptation
    job = create(catalog, _store(catalog), owner=owner, model=request.model,
                 training_file=request.training_file, validation_file=request.validation_file,
                 n_epochs=hyper.n_epochs, batch_size=hyper.batch_size,
                 learning_rate_multiplier=hyper.learning_rate_multiplier,
                 suffix=request.suffix, seed=request.seed, metadata=request.metadata,
                 options=options, principal=principal,
                 max_active=catalog.settings.max_queued_jobs_per_key)
    audit(http, "create", job.id, {"model": job.model, "fine_tuned_model": job.fine_tuned_model,
                                   "visibility": job.config.get("visibility")})
    return job_object(job)


@router.get("/fine_tuning/jobs", response_model=FineTuningJobList,
            summary="Your fine-tuning jobs, newest first")
def list_jobs(catalog: CatalogDep, owner: OwnerDep, after: str | None = None,
              limit: int = Query(default=20, ge=1, le=100)) -> FineTuningJobList:
    if after is not None:
        _owned(catalog, after, owner)
    jobs, more = _store(catalog).page(owner=owner, after=after, limit=limit)
    return FineTuningJobList(data=[job_object(j) for j in jobs], has_more=more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, summary="One job")
def get_job(job_id: str, catalog: CatalogDep, owner: OwnerDep) -> FineTuningJob:
    return job_object(_owned(catalog, job_id, owner))


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob,
             summary="Cancel a job (a running one stops within seconds)")
def cancel_job(job_id: str, catalog: CatalogDep, owner: WriteOwnerDep) -> FineTuningJob:
    _owned(catalog, job_id, owner)
    return job_object(_store(catalog).request_cancel(job_id))


@router.post("/fine_tuning/jobs/{job_id}/pause", response_model=FineTuningJob,
             summary="Pause a job (a running one stops after its step, with a checkpoint)")
def pause_job(job_id: str, catalog: CatalogDep, owner: WriteOwnerDep) -> FineTuningJob:
    _owned(catalog, job_id, owner)
    return job_object(_store(catalog).request_pause(job_id))


@router.post("/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob,
             summary="Resume a paused job from its checkpoint")
def resume_job(job_id: str, catalog: CatalogDep, owner: WriteOwnerDep) -> FineTuningJob:
    _owned(catalog, job_id, owner)
    return job_object(_store(catalog).resume(job_id))


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=FineTuningJobEventList,
            summary="The job's events, newest first")
def list_events(job_id: str, catalog: CatalogDep, owner: OwnerDep, after: str | None = None,
                limit: int = Query(default=20, ge=1, le=1000)) -> FineTuningJobEventList:
    _owned(catalog, job_id, owner)
    events, more = _store(catalog).events(job_id, after=after, limit=limit)
    return FineTuningJobEventList(has_more=more, data=[FineTuningJobEvent(
        id=e.id, created_at=unix(e.created_at), level=e.level, message=e.message,
        type=e.type, data=e.data or {}) for e in events])  # type: ignore[arg-type]


@router.get("/fine_tuning/jobs/{job_id}/checkpoints",
            response_model=FineTuningJobCheckpointList,
            summary="The job's per-epoch checkpoints, each a model of the store")
def list_checkpoints(job_id: str, catalog: CatalogDep, owner: OwnerDep,
                     after: str | None = None, limit: int = Query(default=10, ge=1, le=100)
                     ) -> FineTuningJobCheckpointList:
    _owned(catalog, job_id, owner)
    checkpoints, more = _store(catalog).checkpoints(job_id, after=after, limit=limit)
    data = [FineTuningJobCheckpoint(
        id=c.id, created_at=unix(c.created_at), fine_tuned_model_checkpoint=c.model,
        fine_tuning_job_id=c.job_id, step_number=c.step_number,
        metrics={k: float(v) for k, v in c.metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)})
        for c in checkpoints]
    return FineTuningJobCheckpointList(data=data, first_id=data[0].id if data else None,
                                       last_id=data[-1].id if data else None, has_more=more)
