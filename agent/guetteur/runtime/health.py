"""Tell systemd how the agent is doing: sd_notify READY / WATCHDOG / STATUS / STOPPING.

The protocol is one datagram per message on the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract name written with a leading ``@``), each datagram a few
``KEY=value`` lines. It is implemented here with :mod:`socket` so it needs neither
systemd-python nor libsystemd.

The watchdog is petted only from the lead's supervisor loop, through
:meth:`HealthSupervisor.tick`, and only while every camera worker and the link are alive. Never
from a timer thread: a timer would keep petting while the loop that should notice a hang is
itself hung, which is exactly what the watchdog exists to catch.

:meth:`HealthSupervisor.tick` also writes a small JSON health file (``/run/guetteur/health.json``
under systemd, on tmpfs: no SD-card wear). The update helper (:mod:`guetteur.ops.updates`) waits on
it after switching releases to decide whether to keep the new release or roll back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from guetteur import __version__
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 5.0
"""How often to call :meth:`HealthSupervisor.tick` when systemd asked for no watchdog."""

MIN_TICK_S = 0.05
HEALTH_FILE_NAME = "health.json"


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or abstract (``@name`` → ``\\0name``).

    Returns None for an unset or unusable value (relative paths are not allowed by systemd)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_timeout_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """The watchdog timeout systemd set for this process (``WATCHDOG_USEC``), in seconds.

    None when there is no watchdog, when the value does not parse, or when ``WATCHDOG_PID`` names
    another process (the variables were inherited, not meant for us)."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer: the systemd watchdog is ignored", raw)
        return None
    if usec <= 0:
        return None
    wd_pid = env.get("WATCHDOG_PID")
    if wd_pid:
        try:
            if int(wd_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def tick_interval_s(watchdog_s: float | None) -> float:
    """How often the supervisor loop should tick: a third of the watchdog timeout (systemd advises
    half; a third leaves room for a slow loop on a loaded box), or :data:`DEFAULT_TICK_S`."""
    if watchdog_s is None:
        return DEFAULT_TICK_S
    return max(MIN_TICK_S, min(DEFAULT_TICK_S, watchdog_s / 3))


class Notifier:
    """Sends sd_notify datagrams. Silent no-op when not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(
        self, notify_socket: str | None = None, *, env: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if env is None else env
        value = notify_socket if notify_socket is not None else env.get("NOTIFY_SOCKET")
        self.address = notify_address(value)
        if value and self.address is None:
            log.warning(
                "NOTIFY_SOCKET=%r is not a socket path or @name: systemd will not hear "
                "from the agent (READY/WATCHDOG are not sent)",
                value,
            )
        self._sock: socket.socket | None = None
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=value`` lines. Returns False (and logs once per failure
        streak) when it could not be sent; never raises."""
        if self.address is None:
            return False
        text = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if self.failures == 0:
                log.error(
                    "cannot notify systemd on %r: %s; the watchdog may restart the agent",
                    self.address,
                    exc,
                )
            self.failures += 1
            return False
        self.failures = 0
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"READY": 1, "MAINPID": os.getpid()}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up or stop time (``EXTEND_TIMEOUT_USEC``), e.g. while many cameras
        are still opening."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value assignment in the datagram.
    return " ".join(text.splitlines())


@dataclass(frozen=True)
class HealthVerdict:
    """The outcome of one tick."""

    healthy: bool
    dead_cameras: tuple[str, ...]
    link_alive: bool
    status: str


def assess(camera_alive: Mapping[str, bool], link_alive: bool, summary: str) -> HealthVerdict:
    """Pure core: healthy only if every camera worker and the link are alive.

    The STATUS line starts with the summary and names what is not alive, so ``systemctl status``
    tells a technician which camera stalled."""
    dead = tuple(sorted(cam for cam, alive in camera_alive.items() if not alive))
    problems = [f"camera {cam} not alive" for cam in dead]
    if not link_alive:
        problems.append("link not alive")
    status = summary if not problems else f"{summary} | UNHEALTHY: {', '.join(problems)}"
    return HealthVerdict(not problems, dead, link_alive, status)


class HealthSupervisor:
    """Drives READY / WATCHDOG / STATUS / STOPPING from the agent's supervisor loop.

    Usage (in ``guetteur run``)::

        health = HealthSupervisor(health_file=Path("/run/guetteur/health.json"))
        ... set up cameras and link ...
        health.ready("4 cameras, link connecting")
        while not stop.wait(health.tick_interval_s):
            ... restart stalled camera workers first ...
            health.tick({cam: worker.alive for ...}, link.alive, summary)
        health.stopping()

    What counts as alive is the caller's call; the contract of the issue is: a camera worker is
    not alive when it is hung or its stream is stalled (no packet for ``stall_timeout_s``). The
    supervisor restarts a stalled worker first; the watchdog fires only if that does not bring it
    back within ``WatchdogSec``.
    """

    def __init__(
        self,
        notifier: Notifier | None = None,
        *,
        env: Mapping[str, str] | None = None,
        health_file: Path | None = None,
        version: str = __version__,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier if notifier is not None else Notifier(env=env)
        self.watchdog_s = watchdog_timeout_s(env)
        self.tick_interval_s = tick_interval_s(self.watchdog_s)
        self.health_file = health_file
        self.version = version
        self._clock = clock
        self._last_status: str | None = None
        self._last_healthy: bool | None = None
        self.last_pet: float | None = None
        self.is_ready = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> HealthSupervisor:
        """What ``guetteur run`` should use: NOTIFY_SOCKET/WATCHDOG_USEC from systemd, and the
        health file in ``$RUNTIME_DIRECTORY`` (``/run/guetteur`` from the unit's
        RuntimeDirectory=) when there is one."""
        env = os.environ if env is None else env
        runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
        health_file = Path(runtime) / HEALTH_FILE_NAME if runtime else None
        return cls(env=env, health_file=health_file)

    def ready(self, summary: str) -> None:
        """Cameras and link are set up: READY=1 with a first STATUS line."""
        self.is_ready = True
        self.notifier.ready(summary)
        self._last_status = summary
        log.info("agent ready: %s", summary)

    def tick(self, camera_alive: Mapping[str, bool], link_alive: bool, summary: str) -> bool:
        """Pet the watchdog when everything is alive; update STATUS when it changed.

        Returns True when healthy (WATCHDOG=1 was sent if systemd asked for a watchdog)."""
        verdict = assess(camera_alive, link_alive, summary)
        if verdict.healthy:
            if self.watchdog_s is not None:
                self.notifier.watchdog()
            self.last_pet = self._clock()
        elif self._last_healthy is not False:
            log.warning(
                "agent unhealthy (%s): the systemd watchdog is no longer petted; it restarts the "
                "agent after %s s unless this clears",
                verdict.status.split("UNHEALTHY: ", 1)[-1],
                "n/a" if self.watchdog_s is None else f"{self.watchdog_s:g}",
            )
        if verdict.status != self._last_status:
            self.notifier.status(verdict.status)
            self._last_status = verdict.status
        if verdict.healthy and self._last_healthy is False:
            log.info("agent healthy again: %s", summary)
        self._last_healthy = verdict.healthy
        self._write_health_file(verdict)
        return verdict.healthy

    def stopping(self, summary: str = "stopping") -> None:
        self.notifier.stopping(summary)
        self._last_status = summary
        if self.health_file is not None:
            try:
                self.health_file.unlink(missing_ok=True)
            except OSError:
                pass

    def _write_health_file(self, verdict: HealthVerdict) -> None:
        if self.health_file is None:
            return
        record = {
            "v": 1,
            "healthy": verdict.healthy,
            "ready": self.is_ready,
            "pid": os.getpid(),
            "version": self.version,
            "time": iso_ms(),
            "status": verdict.status,
        }
        tmp = self.health_file.with_name(f".{self.health_file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.health_file)
        except OSError as exc:
            log.warning(
                "cannot write health file %s: %s (updates cannot confirm health)",
                self.health_file,
                exc,
            )


def read_health_file(path: Path) -> dict[str, object] | None:
    """The last record written by :class:`HealthSupervisor`, or None when missing/unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
