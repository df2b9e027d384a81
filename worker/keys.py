"""Redis key and channel names, all under one short prefix so `redis-cli --scan` finds them.

The README's "Redis keys" table documents each of these for operators.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Keys:
    prefix: str = "inf"

    def queue(self, model: str) -> str:
        """arq queue (sorted set of job ids; score = enqueue ms minus the priority lift)."""
        return f"{self.prefix}:q:{model}"

    def job_id(self, request_id: str) -> str:
        """arq job id: carries the prefix so arq's own keys (arq:job:<id>) stay attributable."""
        return f"{self.prefix}:{request_id}"

    def events(self, request_id: str) -> str:
        """Pub/sub channel a request's token events travel on."""
        return f"{self.prefix}:ev:{request_id}"

    def wake(self, model: str) -> str:
        """Pub/sub channel that wakes idle workers of a model when a job is queued."""
        return f"{self.prefix}:wake:{model}"

    @property
    def cancel(self) -> str:
        """Pub/sub channel on which fronts announce cancelled request ids."""
        return f"{self.prefix}:cancel"

    def cancelled(self, request_id: str) -> str:
        """Marker that a request was cancelled, for a worker that picks its job up late."""
        return f"{self.prefix}:cancelled:{request_id}"

    def done(self, request_id: str) -> str:
        """A request's final event (finish or error), kept briefly for a front that missed it."""
        return f"{self.prefix}:done:{request_id}"

    def sent(self, job_key: str) -> str:
        """Marker that a streamed job's first token went out: it is not re-run after a worker death."""
        return f"{self.prefix}:sent:{job_key}"

    @property
    def workers(self) -> str:
        """Sorted set of live workers: member '<model>/<worker id>', score = heartbeat expiry ms."""
        return f"{self.prefix}:workers"

    def worker(self, model: str, worker_id: str) -> str:
        """Hash describing one worker; expires unless its heartbeat renews it."""
        return f"{self.prefix}:worker:{model}:{worker_id}"

    def running(self, model: str) -> str:
        """Hash request id -> worker id of the jobs a model's workers are running now."""
        return f"{self.prefix}:running:{model}"

    def dag(self, dag_id: str) -> str:
        """Hash of one orchestration DAG: its plan, status, summary and final answer."""
        return f"{self.prefix}:dag:{dag_id}"

    def dag_outputs(self, dag_id: str) -> str:
        """Hash step name -> that step's output, written once per step."""
        return f"{self.prefix}:dag:{dag_id}:out"

    def dag_claims(self, dag_id: str) -> str:
        """Set of DAG transitions already taken, so a retried step cannot advance twice."""
        return f"{self.prefix}:dag:{dag_id}:adv"

    def dag_jobs(self, dag_id: str) -> str:
        """Hash step name -> model of every step enqueued, so a cancel can withdraw them."""
        return f"{self.prefix}:dag:{dag_id}:jobs"

    @property
    def fleet(self) -> str:
        """Pub/sub channel on which fronts ask fleet supervisors to load or unload a model."""
        return f"{self.prefix}:fleet"

    def control(self, model: str) -> str:
        """Pub/sub channel telling every worker of a model to stop after its running jobs."""
        return f"{self.prefix}:ctl:{model}"

    def loading(self, model: str) -> str:
        """Set while a supervisor starts a worker for the model, before the worker registers."""
        return f"{self.prefix}:loading:{model}"

    @property
    def last_used(self) -> str:
        """Sorted set model -> when its last job finished (ms): least recently used for eviction."""
        return f"{self.prefix}:lastused"

    @property
    def admitted(self) -> str:
        """Sorted set of admitted request ids (queued or running), scored by their deadline ms."""
        return f"{self.prefix}:admitted"

    @property
    def metrics(self) -> str:
        """Hash of the fleet's counters and histogram buckets, added to by every process (worker/metrics.py)."""
        return f"{self.prefix}:metrics"

    def round_robin(self, role: str) -> str:
        """Counter that rotates requests for a role among the models that have it."""
        return f"{self.prefix}:rr:{role}"

    def unavailable(self, model: str) -> str:
        """Hash (reason, since_ms, host): the fleet gave up starting the model until asked again."""
        return f"{self.prefix}:unavail:{model}"

    def fleet_lock(self, host: str) -> str:
        """Lock a supervisor holds while it checks a host's memory budget and starts a worker."""
        return f"{self.prefix}:fleetlock:{host}"

    def fleet_claim(self, request_id: str) -> str:
        """Marker of the one supervisor that carries out a load request (expires)."""
        return f"{self.prefix}:claim:{request_id}"
