"""The authority inside a running process: listeners, the key ticker, NOTIFY, the HTTPS registration API.

As :mod:`ztdns.daemon` runs the resolver's :mod:`ztdns.handler`, this runs the :mod:`ztdns.authority.handler`.

One code path for ``ztdns serve`` (beside the resolver, sharing its ``Metrics``) and ``ztdns authority serve``
(the same server without the resolver's listeners): :func:`build_service` builds the authority from config and
:class:`AuthorityService` starts, reloads and drains it. It only moves bytes; every decision is in
:class:`~ztdns.authority.handler.Authority`. The listeners are the shared transports: UDP is the
:class:`~ztdns.transport.udp.UdpListener` lane (``Authority.fast`` answers on the lane thread) and TCP the
:class:`~ztdns.transport.tcp.TcpServer`, which writes every message of a zone transfer
(``Authority.respond_all``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update

from ztdns.authority.api import api_listen_config, start_registration_api
from ztdns.authority.build import ZoneLoader, state_dir
from ztdns.authority.handler import Authority, ServedZone
from ztdns.authority.keys import KeyStoreError
from ztdns.authority.transfer import notify_message
from ztdns.authority.zone import ZoneError
from ztdns.client import ClientInfo
from ztdns.config import Config, ConfigError, located
from ztdns.config.listen import ListenConfig
from ztdns.observe.metrics import Metrics
from ztdns.transport import Handler
from ztdns.transport.stream import TlsStreamListener
from ztdns.transport.tcp import TcpServer
from ztdns.transport.tls import TlsError, TlsMaterial
from ztdns.transport.udp import UdpListener

log = logging.getLogger(__name__)


class ListenError(Exception):
    """A listener could not bind; ``key`` locates its address in the config."""

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = key


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AuthorityService:
    """UDP+TCP on each ``listen`` address (port 0 picks one free port for both), the ticker moving key
    timelines every ``tick_seconds``, NOTIFY to secondaries on every new zone version, and the registration API
    when given its listener settings and TLS material."""

    def __init__(
        self,
        authority: Authority,
        listen: Sequence[str] = (),
        api: tuple[ListenConfig, TlsMaterial] | None = None,
        tick_seconds: float = 1.0,
        loader: ZoneLoader | None = None,
    ) -> None:
        self.authority = authority
        self.loader = loader  # what built the authority from config, for reloads
        self.listen = list(listen)
        self.api_settings = api
        self.tick_seconds = tick_seconds
        self._checking: set[dns.name.Name] = set()  # zones whose parent servers are being asked for the DS
        self.udp: list[UdpListener] = []
        self.tcp: list[TcpServer] = []
        self.api: TlsStreamListener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        authority.on_change = self._schedule_notify

    @property
    def port(self) -> int:
        """The first listener's port."""
        return self.tcp[0].address[1]

    async def start(self) -> list[str]:
        """Bind and start everything; returns what listens where. Raises ListenError."""
        loop = asyncio.get_running_loop()
        endpoints = []
        for index, address in enumerate(self.listen):
            try:
                tcp = TcpServer(ListenConfig(transport="tcp", address=address), self.authority)
                await tcp.start(reuse_port=False)
                self.tcp.append(tcp)
                bound = _joined(*tcp.address)
                udp = UdpListener(ListenConfig(transport="udp", address=bound), self.authority, reuse_port=False)
            except OSError as exc:
                message = f"cannot listen on {address}: {exc.strerror or exc}"
                raise ListenError(("authority", "listen", index), message) from None
            udp.start(loop)
            self.udp.append(udp)
            endpoints.append(f"authority udp+tcp {bound}")
        if self.api_settings is not None:
            listen, tls = self.api_settings
            try:
                self.api = await start_registration_api(listen, self.authority, tls)
            except OSError as exc:
                message = f"cannot listen on {listen.address}: {exc.strerror or exc}"
                raise ListenError(("authority", "api", "address"), message) from None
            endpoints.append(f"authority registration API https://{_joined(*self.api.address)}/v1/records/")
        self._spawn(self._ticker())
        return endpoints

    def reload(self, config: Config) -> list[str]:
        """SIGHUP: re-read the registration API's TLS files and apply ``[authority]`` zones, TSIG keys, grants,
        ACLs and RRL; returns the zones rebuilt. Raises ConfigError, leaving the zones as they were. Runs on the
        event loop without yielding, so no UPDATE lands between reading a zone's state and serving it."""
        if self.api is not None:
            self.api.reload()
        if self.loader is None:
            return []
        try:
            return self.loader.load(config.authority, config.base_dir, state_dir(config))
        except (ZoneError, KeyStoreError) as exc:
            raise located(config, ("authority", "zones"), str(exc)) from None
        except OSError as exc:  # the state directory cannot be made
            raise ConfigError([f"{config.source}: [authority] state_dir: {exc}"]) from None

    def stop_accepting(self) -> None:
        """Phase one of draining: no new connections or datagrams; pending answers may still go out."""
        for tcp in self.tcp:
            tcp.stop_accepting()
        for udp in self.udp:
            udp.stop()

    async def drain(self, timeout: float) -> None:
        """Phase two: let pending answers go out for up to ``timeout`` seconds, then close everything."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = [task for udp in self.udp for task in udp.pending]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for tcp in self.tcp:
            await tcp.drain(max(deadline - loop.time(), 0))
        if self.api is not None:
            await self.api.close(max(deadline - loop.time(), 0))
        for udp in self.udp:
            udp.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        self.stop_accepting()
        await self.drain(2.0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("authority background task failed", exc_info=task.exception())

    async def _ticker(self) -> None:
        while True:
            try:
                self.authority.tick()
                self._parent_side()
            except Exception:
                log.exception("key timeline tick failed")
            await asyncio.sleep(self.tick_seconds)

    def _parent_side(self) -> None:
        """DS push and polling for zones with a KSK in submission (the decisions are the zone's)."""
        for zone in list(self.authority.zones.values()):
            push = zone.ds_push_due()
            if push is not None:
                self._spawn(self._push_ds(zone, *push))
            if zone.origin not in self._checking and zone.parent_check_due():
                self._checking.add(zone.origin)
                self._spawn(self._check_parents(zone))

    async def _check_parents(self, zone: ServedZone) -> None:
        try:
            answers = await asyncio.gather(
                *(_parent_ds(zone.origin, host, port) for host, port in zone.settings.parents)
            )
            self.authority.parent_answers(zone, list(answers))
        finally:
            self._checking.discard(zone.origin)

    async def _push_ds(self, zone: ServedZone, tag: int, update: dns.update.UpdateMessage) -> None:
        assert zone.settings.ds_push is not None
        host, port = zone.settings.ds_push
        key = zone.settings.ds_push_key
        if key is not None:
            update.use_tsig(self.authority.keyring, key)
        try:
            response = await dns.asyncquery.tcp(update, host, port=port, timeout=5.0)
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("DS push for %s to %s:%d failed: %s", zone.origin, host, port, exc)
            return
        if response.rcode() != dns.rcode.NOERROR:
            rcode = dns.rcode.to_text(response.rcode())
            log.warning("DS push for %s to %s:%d refused: %s", zone.origin, host, port, rcode)
            return
        log.info("DS of key %d of %s pushed to %s:%d", tag, zone.origin, host, port)
        zone.ds_pushed(tag)

    def _schedule_notify(self, zone: ServedZone) -> None:
        for host, port in zone.settings.notify:
            self._spawn(self._notify(zone, host, port))

    async def _notify(self, zone: ServedZone, host: str, port: int) -> None:
        # RFC 1996 §3.6: retry a few times with growing waits until the secondary acknowledges. An answer that
        # is not NOERROR (REFUSED, NOTAUTH: the secondary does not accept it) is no acknowledgement.
        key = zone.settings.notify_key
        keyring = self.authority.keyring if key is not None else None
        for attempt in range(4):
            message = notify_message(zone.zone, keyring, key)
            try:
                response = await dns.asyncquery.udp(message, host, port=port, timeout=1.0 + attempt)
                if response.rcode() == dns.rcode.NOERROR:
                    return
            except (dns.exception.DNSException, OSError):
                pass
            await asyncio.sleep(0.5 * (attempt + 1))
        log.warning("secondary %s:%d did not acknowledge NOTIFY for %s", host, port, zone.origin)


async def _parent_ds(origin: dns.name.Name, host: str, port: int) -> dns.rrset.RRset | None:
    """The DS RRset a parent server serves for ``origin`` (empty when it has none), None without an answer."""
    query = dns.message.make_query(origin, dns.rdatatype.DS)
    try:
        response = await dns.asyncquery.udp(query, host, port=port, timeout=2.0)
        if response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(query, host, port=port, timeout=5.0)
    except (dns.exception.DNSException, OSError):
        return None
    if response.rcode() != dns.rcode.NOERROR:
        return None
    found = response.get_rrset(response.answer, origin, dns.rdataclass.IN, dns.rdatatype.DS)
    return found if found is not None else dns.rrset.RRset(origin, dns.rdataclass.IN, dns.rdatatype.DS)


UPDATE_OPCODE = 5


class UpdateRouting:
    """The resolver's listeners with the authority's UPDATE: an RFC 2136 UPDATE arriving on a resolver listener
    (DoT with a client certificate: the certificate's SPIFFE ID authorises it) goes to the authority, anything
    else to the resolver's handler. Wraps the handler of the resolver's encrypted listeners."""

    def __init__(self, resolver: Handler, authority: Authority) -> None:
        self.resolver = resolver
        self.authority = authority

    @staticmethod
    def _is_update(wire: bytes) -> bool:
        return len(wire) >= 12 and not wire[2] & 0x80 and (wire[2] >> 3) & 0xF == UPDATE_OPCODE

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return None if self._is_update(wire) else self.resolver.fast(wire, client)

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        if self._is_update(wire):
            return await self.authority.handle(wire, client)
        return await self.resolver.handle(wire, client)


def build_service(config: Config, metrics: Metrics) -> AuthorityService | None:
    """The ``[authority]`` service, built (zone files read, keys loaded or made) but not started; None when the
    section has neither zones nor listeners. Raises ConfigError naming the file and key at fault."""
    settings = config.authority
    if not settings.zones and not settings.listen:
        return None
    try:
        loader = ZoneLoader(settings, config.base_dir, state_dir(config), metrics)
    except (ZoneError, KeyStoreError) as exc:
        raise located(config, ("authority", "zones"), str(exc)) from None
    except OSError as exc:  # the state directory cannot be made
        raise ConfigError([f"{config.source}: [authority] state_dir: {exc}"]) from None
    api = None
    if settings.api is not None:
        a = settings.api
        listen = api_listen_config(a.address, a.cert, a.key, a.ca, a.crl, a.tls_min_version)
        try:
            api = (listen, TlsMaterial.from_config(listen, config.base_dir))
        except TlsError as exc:
            raise located(config, ("authority", "api"), str(exc)) from None
    return AuthorityService(loader.authority, settings.listen, api, loader=loader)
