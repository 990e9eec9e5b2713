"""Fine-tuning as a service: jobs queued in the database and run by workers.

- `tables.py`: the job, event and checkpoint rows (the jobs table is the queue);
- `states.py`: the status enum and which transitions are allowed;
- `store.py`: every read and write of job rows (claims with leases, heartbeats,
  events, checkpoints, terminal states), in short transactions;
- `service.py`: what callers ask for (create a job from an OpenAI-style request, list,
  cancel, pause, resume), with the checks that answer 400 before any row exists;
- `worker.py`: the worker loop that validates files, claims jobs and supervises each
  job's child process (`runner.py`) with a lease and heartbeats;
- `runner.py`: the child process that trains one job and reports its events.

No HTTP here: `api/openai/fine_tuning.py` translates requests into `service` calls.
"""
