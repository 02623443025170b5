"""Job changes told over Redis pub/sub, so that a held request waits for a change instead
of querying the database every second.

The services publish, after each commit that changes jobs, a tiny message on
`<NOTIFY_CHANNEL_PREFIX>:job:<id>` and on `<prefix>:batch:<id>` of each job's batch. A held
request (a job's `?wait=`, a batch's event stream) watches its channel and looks at the
database once per message.

Each web process has one listener: a thread of its own running an asyncio loop with one
Redis pub/sub connection, subscribed to the channels someone in the process watches and
fanning each message out to their watchers. So a thousand held requests cost one Redis
connection and no thread each, and it serves the held process's loop (uvicorn) and
gunicorn's threads alike.

Redis being away loses nothing, it only slows: a publish that fails is logged (at most once
a minute) and the service carries on; while the listener has no connection, the holders
look at the database every HELD_POLL_SECONDS instead, and when it connects again it wakes
them all to look once, for what changed meanwhile.
"""

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator

import redis
import redis.asyncio
from django.conf import settings
from django.db import transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# How long a publish, a connection or a subscription waits for Redis.
REDIS_TIMEOUT_S = 1.0
# An unreachable Redis is logged at most this often per process.
LOG_EVERY_S = 60.0
# The listener pings Redis this often, and reconnects when it has heard nothing for
# three times as long (a Redis that hangs closes no socket).
PING_EVERY_S = 5.0
# How long the listener waits before connecting again after losing Redis.
RECONNECT_S = 1.0

_last_logged = -LOG_EVERY_S
_log_lock = threading.Lock()


def _log_unreachable(what: str, exc: BaseException) -> None:
    global _last_logged
    with _log_lock:
        if time.monotonic() - _last_logged < LOG_EVERY_S:
            return
        _last_logged = time.monotonic()
    log.warning("Redis unreachable for job notifications, %s: %s", what, exc)


def _redis_options() -> dict:
    # No retries inside redis-py: a failed publish is given up at once, and the listener
    # reconnects by itself, waking its holders.
    return {
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }


def job_channel(job_id) -> str:
    return f"{settings.NOTIFY_CHANNEL_PREFIX}:job:{job_id}"


def batch_channel(batch_id) -> str:
    return f"{settings.NOTIFY_CHANNEL_PREFIX}:batch:{batch_id}"


# --- Publishing (the services) ----------------------------------------------------------

_publisher: redis.Redis | None = None
_publisher_lock = threading.Lock()


def _publisher_client() -> redis.Redis:
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = redis.Redis.from_url(
                settings.NOTIFY_REDIS_URL, socket_timeout=REDIS_TIMEOUT_S, **_redis_options()
            )
        return _publisher


def publish(channels: Iterable[str]) -> None:
    """Publish a change on each channel, in one round trip; never raises."""
    channels = sorted(set(channels))
    if not channels:
        return
    try:
        pipe = _publisher_client().pipeline(transaction=False)
        for channel in channels:
            pipe.publish(channel, "changed")
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        _log_unreachable("a change was not told (held requests see it at their deadline)", exc)


def publish_after_commit(*, jobs: Iterable = (), batches: Iterable = ()) -> None:
    """Tell the watchers of these jobs and batches (ids; None is skipped) once the current
    transaction commits (at once outside one)."""
    channels = {job_channel(job_id) for job_id in jobs}
    channels |= {batch_channel(batch_id) for batch_id in batches if batch_id is not None}
    if channels:
        transaction.on_commit(lambda: publish(channels))


# --- Listening (the held requests) -----------------------------------------------------


class Watch:
    """A held request's interest in some channels. wait() returns True when the holder
    should look at the database again: a message came on one of its channels, the
    listener connected or lost Redis, or, while it cannot be told (no Redis), every
    HELD_POLL_SECONDS."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._flag = threading.Event()
        self._event = asyncio.Event() if loop is not None else None
        # Whether its channels are subscribed; the listener sets it when it (re)connects.
        self.told = False
        # When (time.monotonic()) the reason to look again arose: a reading of the database
        # begun later sees what it was told of (the change was committed before it was told).
        self.woken_at = -math.inf
        self.reason_at = -math.inf

    def wake(self) -> None:
        """From the listener's thread."""
        self.woken_at = time.monotonic()
        self._flag.set()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has just ended
                self._loop.call_soon_threadsafe(self._event.set)

    def _timeout(self, until: float) -> tuple[float, bool]:
        """How long to wait, and whether that is a poll's interval (then a reason to
        look again when it runs out) rather than the time left."""
        left = max(0.0, until - time.monotonic())
        if self.told and _listener().connected:
            return left, False
        return min(left, settings.HELD_POLL_SECONDS), left > settings.HELD_POLL_SECONDS

    async def wait(self, until: float) -> bool:
        """Until a reason to look again, or until `until` (time.monotonic())."""
        timeout, polling = self._timeout(until)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
        woken = self._flag.is_set()
        self._flag.clear()
        self.reason_at = self.woken_at if woken else time.monotonic()
        return woken or polling

    def wait_sync(self, until: float) -> bool:
        """wait() for a thread (gunicorn's)."""
        timeout, polling = self._timeout(until)
        woken = self._flag.wait(timeout)
        self._flag.clear()
        return woken or polling


class _Listener:
    """The process's one pub/sub connection, in a thread with its own asyncio loop."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()  # guards _watches, shared with the holders' threads
        self._watches: dict[str, set[Watch]] = {}
        self._confirmed: dict[str, asyncio.Future] = {}  # channel -> its SUBSCRIBE's answer
        self._pubsub = None
        self._alive_channel = f"{settings.NOTIFY_CHANNEL_PREFIX}:listener"
        self.connected = False
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run, name="job-notifications", daemon=True)
        thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen_forever())

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (redis.RedisError, OSError, TimeoutError) as exc:
                _log_unreachable("held requests look at the database instead", exc)
            self._lost()
            await asyncio.sleep(RECONNECT_S)

    async def _listen(self) -> None:
        client = redis.asyncio.Redis.from_url(self._url, **_redis_options())
        pubsub = client.pubsub()
        try:
            # Connected before the holders may use it: two subscribe() calls racing on an
            # unconnected PubSub open a connection each, and the confirmations of the
            # first one's channels are never read.
            await asyncio.wait_for(pubsub.connect(), REDIS_TIMEOUT_S)
            with self._lock:
                channels = list(self._watches)
            self._confirmed = {channel: self._loop.create_future() for channel in channels}
            self._pubsub = pubsub
            # The listener's own channel last: its confirmation comes after the others'.
            await asyncio.wait_for(
                pubsub.subscribe(*channels, self._alive_channel), REDIS_TIMEOUT_S
            )
            heard = pinged = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    self._dispatch(message)
                if now - heard > 3 * PING_EVERY_S:
                    raise TimeoutError(f"no answer from Redis for {now - heard:.0f} s")
                if now - pinged > PING_EVERY_S:
                    await pubsub.ping()
                    pinged = now
        finally:
            self._pubsub = None
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    def _dispatch(self, message: dict) -> None:
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        if message["type"] == "message":
            with self._lock:
                watches = list(self._watches.get(channel, ()))
            for watch in watches:
                watch.wake()
        elif message["type"] == "subscribe":
            future = self._confirmed.get(channel)
            if future is not None and not future.done():
                future.set_result(True)
            if channel == self._alive_channel:
                self.connected = True
                self._wake_all(told=True)

    def _lost(self) -> None:
        self.connected = False
        for future in self._confirmed.values():
            if not future.done():
                future.set_result(False)
        self._confirmed = {}
        self._wake_all(told=False)

    def _wake_all(self, *, told: bool) -> None:
        with self._lock:
            watches = {
                watch for channel_watches in self._watches.values() for watch in channel_watches
            }
        for watch in watches:
            watch.told = told
            watch.wake()

    async def _subscribe(self, channels: list[str]) -> bool:
        """Whether the channels are subscribed (False: no Redis now)."""
        pubsub = self._pubsub
        if pubsub is None:
            return False
        new = [channel for channel in channels if channel not in self._confirmed]
        for channel in new:
            self._confirmed[channel] = self._loop.create_future()
        futures = [self._confirmed[channel] for channel in channels]
        if new:
            try:
                await pubsub.subscribe(*new)
            except (redis.RedisError, OSError):
                return False  # the reading side notices the connection is gone
        # wait(), not gather(): these futures are shared with other holders and must not
        # be cancelled with this one.
        await asyncio.wait(futures)
        return all(future.result() for future in futures)

    async def _unsubscribe(self, channels: list[str]) -> None:
        with self._lock:
            unwatched = [channel for channel in channels if channel not in self._watches]
        for channel in unwatched:
            self._confirmed.pop(channel, None)
        if unwatched and self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(*unwatched)

    def add(self, watch: Watch, channels: list[str]) -> concurrent.futures.Future:
        """Registers the watch and asks for its channels' subscription; returns a future
        of whether they are subscribed."""
        with self._lock:
            for channel in channels:
                self._watches.setdefault(channel, set()).add(watch)
        return asyncio.run_coroutine_threadsafe(self._subscribe(channels), self._loop)

    def remove(self, watch: Watch, channels: list[str]) -> None:
        with self._lock:
            for channel in channels:
                watches = self._watches.get(channel)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[channel]
        asyncio.run_coroutine_threadsafe(self._unsubscribe(channels), self._loop)


_the_listener: _Listener | None = None
_listener_lock = threading.Lock()


def _listener() -> _Listener:
    global _the_listener
    with _listener_lock:
        if _the_listener is None:
            _the_listener = _Listener(settings.NOTIFY_REDIS_URL)
        return _the_listener


def _subscribed_late(watch: Watch, subscribed: concurrent.futures.Future) -> None:
    # The holder stopped waiting for its subscription (hundreds of holds arriving at once
    # on a busy machine can take longer than REDIS_TIMEOUT_S) and looked at the database
    # without it: a change told before it came was missed, so the holder looks once more.
    if subscribed.result():
        watch.told = True
        watch.wake()


@contextlib.asynccontextmanager
async def watching(*channels: str) -> AsyncIterator[Watch]:
    """A watch of these channels, subscribed (when Redis is there) before it is given:
    a change committed after the holder's next look at the database is told to it."""
    watch = Watch(asyncio.get_running_loop())
    listener = _listener()
    subscribed = listener.add(watch, list(channels))
    try:
        try:
            # Shielded: the subscription goes on for the others watching these channels.
            confirmed = asyncio.shield(asyncio.wrap_future(subscribed))
            watch.told = await asyncio.wait_for(confirmed, REDIS_TIMEOUT_S)
        except TimeoutError:
            subscribed.add_done_callback(functools.partial(_subscribed_late, watch))
        yield watch
    finally:
        listener.remove(watch, list(channels))


@contextlib.contextmanager
def watching_sync(*channels: str) -> Iterator[Watch]:
    """watching() for a thread."""
    watch = Watch(None)
    listener = _listener()
    subscribed = listener.add(watch, list(channels))
    try:
        try:
            watch.told = subscribed.result(REDIS_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            subscribed.add_done_callback(functools.partial(_subscribed_late, watch))
        yield watch
    finally:
        listener.remove(watch, list(channels))
