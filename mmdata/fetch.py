"""Asynchronous HTTP fetching with politeness and safety, for images of pairs and documents.

One `Fetcher` per task (one asyncio loop, one aiohttp session). What it guarantees:

- **Bounded time**: every attempt has a connect, a first-byte (also: longest stall between body
  chunks) and a total timeout; retries and waits are capped, so a batch finishes in bounded time
  whatever the servers do.
- **Politeness**: a global cap on requests in flight, a per-host cap and an optional per-host rate;
  429/503 with Retry-After pause the whole host (up to `retry_after_max`, beyond that we give up
  rather than hammer). On a Dask worker the per-host cap, rate and pauses hold for the whole run,
  across every task (mmdata.politeness);
  transient failures (timeouts, resets, truncated bodies, 408/425/429/5xx) retried with full
  jitter; a user agent that names the crawler; robots.txt per host (cached, fetched once); the
  X-Robots-Tag directives in `x_robots_directives`; an opt-out list of domains or URL prefixes.
- **Safety**: the SSRF guard resolves names itself and refuses non-public addresses (loopback,
  private, link-local, CGNAT, multicast, reserved, cloud metadata) unless allow-listed; the check is
  on the address actually connected to, so DNS rebinding cannot slip past it, and every redirect
  hop is checked again. Bodies over `max_bytes` are cut off.
- `connect_to` sends a host's requests to another address (curl --connect-to), keeping the URL,
  the Host header and TLS server name; it applies to host names, not IP literals. A target written
  `http://addr:port` is a plain-HTTP mirror: https URLs of that host are requested from it over
  HTTP (results, redirects and robots.txt keep the original URLs).

Statuses (`FetchResult.status`):
  success                 body fetched
  failed_to_download      network error, timeout, HTTP error, too large, too many redirects,
                          robots.txt unreachable (retryable by `download --retry-failed`)
  skipped_robots          robots.txt disallows the URL for our user agent
  skipped_opt_out         the URL or its domain is on the opt-out list
  skipped_x_robots_tag    the response carries a refused X-Robots-Tag directive
  skipped_ssrf            the host resolves to a non-public address that is not allow-listed
  skipped_invalid_url     not an absolute http(s) URL
"""

from __future__ import annotations

import asyncio
import email.utils
import fnmatch
import ipaddress
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
from aiohttp.abc import AbstractResolver

from mmdata import politeness
from mmdata.config import FetchConfig

SUCCESS = "success"
FAILED = "failed_to_download"
ROBOTS = "skipped_robots"
OPT_OUT = "skipped_opt_out"
X_ROBOTS = "skipped_x_robots_tag"
SSRF = "skipped_ssrf"
INVALID = "skipped_invalid_url"

RETRY_HTTP = frozenset((408, 425, 429, 500, 502, 503, 504))
PAUSE_HTTP = frozenset((429, 503))  # statuses whose Retry-After pauses the host
ACCEPT_IMAGES = "image/avif,image/webp,image/*,*/*;q=0.8"
ACCEPT_PAGES = "text/html,application/xhtml+xml,*/*;q=0.8"
ROBOTS_MAX_BYTES = 512 * 1024  # Google's limit is 500 KiB
METADATA_IPS = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")))


@dataclass
class FetchResult:
    url: str
    status: str
    error_message: str | None = None
    body: bytes | None = None
    http_status: int | None = None
    final_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # of the last response
    attempts: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class Refused(OSError):
    """The SSRF guard refused an address (raised inside the resolver, so aiohttp wraps it)."""


class _Fail(Exception):
    """One attempt's outcome other than success: status, message, retry hint."""

    def __init__(self, status: str, message: str, *, http_status: int | None = None,
                 transient: bool = False, wait: float | None = None, url: str | None = None):
        super().__init__(message)
        self.status, self.message, self.http_status = status, message, http_status
        self.transient, self.wait, self.url = transient, wait, url


# ---------------------------------------------------------------------------------------------
# policy: allow-list, opt-out, connect-to


def _host_match(host: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(host, pattern.lower())


def _domain_match(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


_DIGITS = {10: frozenset("0123456789"), 8: frozenset("01234567"), 16: frozenset("0123456789abcdefABCDEF")}


def ipv4_host(host: str) -> str | None:
    """The dotted-quad form of a host that URL parsers and inet_aton read as an IPv4 address
    (WHATWG URL host parsing): `2130706433`, `127.1`, `0x7f.1`, `017700000001` are all 127.0.0.1.
    None when the host does not end in a number (a name); ValueError when it does but is no address
    (`1.2.3.4.5`, `256.1.1.1`), which browsers refuse too."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    if not (last and (set(last) <= _DIGITS[10] or (last[:2].lower() == "0x" and set(last[2:]) <= _DIGITS[16]))):
        return None
    if len(parts) > 4:
        raise ValueError(f"{host}: more than 4 parts in an IPv4 address")
    nums = []
    for part in parts:
        if part[:2].lower() == "0x":
            base, digits = 16, part[2:]
        elif len(part) > 1 and part[0] == "0":
            base, digits = 8, part[1:]
        else:
            base, digits = 10, part
        if not part or not set(digits) <= _DIGITS[base]:
            raise ValueError(f"{host}: {part!r} is not a number")
        nums.append(int(digits, base) if digits else 0)
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise ValueError(f"{host}: out of range for an IPv4 address")
    value = nums[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(nums[:-1]))
    return str(ipaddress.IPv4Address(value))


def public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet (and no cloud metadata endpoint)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and ip not in METADATA_IPS


def load_opt_out(spec: list[str] | str) -> list[str]:
    if isinstance(spec, str):
        from mmdata import fsio

        lines = fsio.read_bytes(spec).decode("utf-8").splitlines()
        return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    return list(spec)


class Policy:
    """The configuration's host rules, parsed once."""

    def __init__(self, cfg: FetchConfig):
        self.cfg = cfg
        self.allow_nets, self.allow_hosts = [], []
        for entry in cfg.allow:
            try:
                self.allow_nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.allow_hosts.append(entry.lower())
        self.opt_domains, self.opt_prefixes = [], []
        self._refusals: dict[str, tuple[str, str] | None] = {}
        for entry in load_opt_out(cfg.opt_out):
            entry = entry.strip()
            if "://" in entry:
                self.opt_prefixes.append(entry)
            else:
                self.opt_domains.append(entry.lower().lstrip("*.").rstrip("/"))
        self.targets = []
        for pattern, target in cfg.connect_to.items():
            plain = target.startswith("http://")
            addr, sep, port = target.removeprefix("http://").rstrip("/").rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"connect_to {pattern!r}: expected 'address:port' or 'http://address:port', got {target!r}")
            self.targets.append((pattern.lower(), addr.strip("[]"), int(port), plain))

    def refusal(self, host: str) -> tuple[str, str] | None:
        """(status, message) refusing every URL of `host`, or None; decided once per host."""
        if host not in self._refusals:
            why = None
            if any(_domain_match(host, d) for d in self.opt_domains):
                why = (OPT_OUT, f"opt-out list covers {host}")
            elif (literal := _ip(host)) is not None and not self.allowed(host, literal):
                why = (SSRF, f"non-public address {host} (ssrf_guard; see fetch.allow)")
            self._refusals[host] = why
        return self._refusals[host]

    def opted_out_url(self, url: str) -> bool:
        return any(url.startswith(p) for p in self.opt_prefixes)

    def allowed(self, host: str, ip) -> bool:
        if not self.cfg.ssrf_guard or public(ip):
            return True
        if any(_host_match(host, p) for p in self.allow_hosts):
            return True
        check = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        return any(check in net for net in self.allow_nets if net.version == check.version)

    def _target(self, host: str) -> tuple[str, int, bool] | None:
        """(address, port, plain HTTP) of the first connect_to entry matching `host`."""
        return next(((addr, port, plain) for pattern, addr, port, plain in self.targets if _host_match(host, pattern)), None)

    def target(self, host: str) -> tuple[str, int] | None:
        found = self._target(host)
        return found[:2] if found else None

    def wire(self, url: str) -> str:
        """The URL put on the wire: an https URL of a plain-HTTP mirror's host goes out as http."""
        if not self.targets or not url.startswith("https:"):
            return url
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            return url
        found = self._target(parts.hostname.rstrip(".").lower())
        if not found or not found[2]:
            return url
        netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return parts._replace(scheme="http", netloc=f"{netloc}:{found[1]}").geturl()


class _Resolver(AbstractResolver):
    """DNS with connect-to and the SSRF guard: only checked addresses reach the socket."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        name = host.rstrip(".").lower()
        addr, port = self.policy.target(name) or (name, port)
        if _ip(addr) is not None:
            infos = [{"hostname": host, "host": addr, "port": port, "family": socket.AF_INET6 if ":" in addr else socket.AF_INET,
                      "proto": 0, "flags": socket.AI_NUMERICHOST}]
        else:
            infos = await self.inner.resolve(addr, port, family)
        ok = [i for i in infos if self.policy.allowed(name, ipaddress.ip_address(i["host"]))]
        if not ok:
            raise Refused(f"{name} resolves to non-public address {infos[0]['host']} (ssrf_guard; see fetch.allow)")
        return ok

    async def close(self) -> None:
        await self.inner.close()


# ---------------------------------------------------------------------------------------------
# helpers


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def x_robots_refused(values: Iterable[str], directives: Iterable[str], agent: str) -> str | None:
    """The refused directive in X-Robots-Tag headers meant for everyone or for `agent`, if any."""
    refused = {d.lower() for d in directives}
    for value in values:
        # "googlebot: noindex" targets one crawler; "noai, noimageai" everyone
        head, sep, rest = value.partition(":")
        token = head.strip().lower() if sep and "," not in head and " " not in head.strip() else None
        listed = rest if token is not None else value
        if token not in (None, "*", agent):
            continue
        for d in listed.split(","):
            if d.strip().lower() in refused:
                return d.strip().lower()
    return None


def _refused(e: BaseException | None) -> Refused | None:
    """The SSRF guard's refusal somewhere in an exception's chain (aiohttp wraps it its own ways)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Refused):
            return e
        seen.add(id(e))
        e = getattr(e, "os_error", None) or e.__cause__ or e.__context__
    return None


def _failure(e: BaseException, cfg: FetchConfig, url: str, http_status: int | None = None) -> _Fail:
    if (refused := _refused(e)) is not None:
        return _Fail(SSRF, str(refused), http_status=http_status, url=url)
    message, transient = _describe(e, cfg)
    return _Fail(FAILED, message, http_status=http_status, transient=transient, url=url)


def _describe(e: BaseException, cfg: FetchConfig) -> tuple[str, bool]:
    """(message, transient) for an exception raised during one attempt."""
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        err = getattr(e, "os_error", None)
        return f"dns: {err}", getattr(err, "errno", None) == socket.EAI_AGAIN
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return f"connect timeout ({cfg.connect_timeout}s)", True
    if isinstance(e, aiohttp.SocketTimeoutError):
        return f"read timeout: no data for {cfg.first_byte_timeout}s", True
    if isinstance(e, TimeoutError):
        return f"total timeout ({cfg.total_timeout}s)", True
    if isinstance(e, aiohttp.ClientPayloadError):
        return f"truncated body: {e}", True
    if isinstance(e, aiohttp.InvalidURL):
        return f"invalid url: {e}", False
    if isinstance(e, aiohttp.ClientError | OSError):
        return f"{type(e).__name__}: {e}", True
    return f"{type(e).__name__}: {e}", False


def _canonical(url: str):
    """(url, its parts) with a numeric IPv4 host in dotted-quad form, so that the policy checks
    and the wire see the address every resolver would; ValueError for what is no http(s) URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"not an absolute http(s) URL: {url[:200]}")
    if ":" in host:  # IPv6 literal
        return url, parts
    quad = ipv4_host(host)
    if quad is None or quad == host:
        return url, parts
    netloc = parts.netloc.rpartition("@")
    hostport = netloc[2]
    port = f":{parts.port}" if parts.port is not None else ""
    fixed = parts._replace(netloc=f"{netloc[0]}{netloc[1]}{quad}{port}" if hostport else quad)
    return fixed.geturl(), urlsplit(fixed.geturl())


# ---------------------------------------------------------------------------------------------
# the fetcher


class Fetcher:
    """`async with Fetcher(cfg) as f:` then `await f.fetch(url)` or `async with f.fetching(url) as r`."""

    def __init__(self, cfg: FetchConfig, accept: str = ACCEPT_IMAGES, link=None):
        """`link`: an awaitable call to the run's host budget (`politeness.worker_link`); by
        default found when running on a Dask worker and `cfg.cluster_wide` is set."""
        self.cfg = cfg
        self.accept = accept
        self.policy = Policy(cfg)
        self.agent = cfg.user_agent.split("/")[0].split()[0].lower() if cfg.user_agent.strip() else "*"
        if link is None and cfg.cluster_wide:
            link = politeness.worker_link()
        self.hosts = (politeness.SharedHosts(cfg.per_host, cfg.per_host_rate, link) if link
                      else politeness.Hosts(cfg.per_host, cfg.per_host_rate))
        self._robots: dict[str, asyncio.Future] = {}
        self.requests = 0  # HTTP requests sent, robots.txt included

    async def __aenter__(self) -> Self:
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        await self.hosts.start()
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, resolver=_Resolver(self.policy), ttl_dns_cache=300, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.cfg.connect_timeout, sock_connect=self.cfg.connect_timeout,
            sock_read=self.cfg.first_byte_timeout,
        )
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self.cfg.user_agent, "Accept": self.accept},
            auto_decompress=True, trust_env=False,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()
        await self.hosts.close()

    async def fetch(self, url: str) -> FetchResult:
        async with self.fetching(url) as result:
            return result

    @asynccontextmanager
    async def fetching(self, url: str):
        """The result of fetching `url`, yielded while it still holds its concurrency slot.

        A successful body keeps one of the `concurrency` slots until the block exits, so work on
        fetched bodies (decoding) slows new downloads instead of piling bodies up in memory.
        """
        result = await self._fetch(url)
        try:
            yield result
        finally:
            if result.body is not None:
                self._slots.release()

    # -- one URL, all attempts

    async def _fetch(self, url: str) -> FetchResult:
        t0 = time.monotonic()
        cfg = self.cfg
        result = FetchResult(url, FAILED)
        try:
            target, parts = _canonical(url)
        except ValueError as e:
            result.status, result.error_message = INVALID, str(e)
            return result
        for attempt in range(cfg.retries + 1):
            result.attempts = attempt + 1
            result.http_status = None  # of this attempt's last response
            try:
                await self._attempt(target, result, parts)
                break
            except _Fail as f:
                result.status, result.error_message = f.status, f.message
                result.http_status = f.http_status if f.http_status is not None else result.http_status
                result.final_url = f.url if f.url != target else url
                if not f.transient or attempt == cfg.retries:
                    break
                if f.wait is not None:
                    await asyncio.sleep(f.wait)
                else:
                    await asyncio.sleep(random.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2**attempt)))
        result.elapsed = time.monotonic() - t0
        return result

    @asynccontextmanager
    async def _slot(self, netloc: str):
        """A slot on the host (after any pause it asked for, at its rate), then a global one."""
        host = self.hosts.get(netloc)
        await self.hosts.acquire(host)
        try:
            async with self._slots:
                yield host
        finally:
            self.hosts.release(host)

    def _check(self, url: str, parts=None) -> tuple[str, str]:
        """Policy checks for one hop (`url` canonical, see `_canonical`); returns (host, netloc)."""
        parts = parts or urlsplit(url)
        host = parts.hostname.rstrip(".").lower()
        if (why := self.policy.refusal(host)) is not None:
            raise _Fail(*why, url=url)
        if self.policy.opted_out_url(url):
            raise _Fail(OPT_OUT, f"opt-out list covers {host}", url=url)
        return host, parts.netloc.lower()

    async def _attempt(self, url: str, result: FetchResult, parts=None) -> None:
        """One attempt, redirects included. Fills `result` and keeps a slot on success; raises _Fail."""
        cfg = self.cfg
        current = url
        for _ in range(cfg.max_redirects + 1):
            _, netloc = self._check(current, parts if current is url else None)
            if cfg.robots_txt:
                await self._robots_check(current, netloc)
            async with self._slot(netloc) as hostinfo:
                body = await self._request(current, hostinfo, result)
            if body is None:  # a redirect: result.final_url holds the next hop
                try:
                    current, _ = _canonical(result.final_url)
                except ValueError as e:
                    raise _Fail(FAILED, f"redirect to an invalid URL: {e}", http_status=result.http_status,
                                url=result.final_url) from None
                continue
            # success: take the global slot again on behalf of the caller (released in fetching)
            await self._slots.acquire()
            result.status, result.error_message, result.body, result.final_url = SUCCESS, None, body, current
            return
        raise _Fail(FAILED, f"too many redirects (> {cfg.max_redirects})", http_status=result.http_status, url=current)

    async def _request(self, url: str, hostinfo: politeness.Host, result: FetchResult) -> bytes | None:
        cfg = self.cfg
        self.requests += 1
        try:
            async with asyncio.timeout(cfg.total_timeout):
                async with self.session.get(self.policy.wire(url), allow_redirects=False) as resp:
                    result.http_status = resp.status
                    result.headers = resp.headers
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        result.final_url = urljoin(url, resp.headers["Location"])
                        return None
                    if resp.status != 200:
                        wait = None
                        if resp.status in PAUSE_HTTP and cfg.retry_after:
                            wait = retry_after(resp.headers.get("Retry-After"))
                            if wait is not None and wait > cfg.retry_after_max:
                                raise _Fail(FAILED, f"HTTP {resp.status} with Retry-After {wait:.0f}s > retry_after_max",
                                            http_status=resp.status, url=url)
                            if wait is not None:
                                # the server asked the whole host to wait: nobody here asks earlier
                                wait += random.uniform(0, 0.1 * wait + 0.05)
                                self.hosts.pause(hostinfo, wait)
                        raise _Fail(FAILED, f"HTTP {resp.status} {resp.reason or ''}".strip(), http_status=resp.status,
                                    transient=resp.status in RETRY_HTTP, wait=wait, url=url)
                    if cfg.x_robots_tag:
                        refused = x_robots_refused(resp.headers.getall("X-Robots-Tag", []), cfg.x_robots_directives, self.agent)
                        if refused:
                            raise _Fail(X_ROBOTS, f"X-Robots-Tag: {refused}", http_status=resp.status, url=url)
                    length = resp.content_length
                    if length is not None and length > cfg.max_bytes:
                        raise _Fail(FAILED, f"body of {length} bytes > max_bytes {cfg.max_bytes}", http_status=resp.status, url=url)
                    if length is not None and resp.headers.get("Content-Encoding", "identity").lower() == "identity":
                        return await resp.read()  # at most Content-Length bytes; a shorter body fails
                    # compressed (a small length may inflate without bound) or of unknown length
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > cfg.max_bytes:
                            raise _Fail(FAILED, f"body larger than max_bytes {cfg.max_bytes}", http_status=resp.status, url=url)
                    return bytes(body)
        except _Fail:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _failure(e, cfg, url, result.http_status) from None

    # -- robots.txt

    async def _robots_check(self, url: str, netloc: str) -> None:
        scheme = urlsplit(url).scheme
        key = f"{scheme}://{netloc}"
        fut = self._robots.get(key)
        if fut is None:
            fut = self._robots[key] = asyncio.ensure_future(self._load_robots(key))
        rules = await asyncio.shield(fut)
        if isinstance(rules, _Fail):
            raise _Fail(rules.status, rules.message, url=url)
        if not rules.can_fetch(self.agent, url):
            raise _Fail(ROBOTS, f"robots.txt of {netloc} disallows this URL", url=url)

    async def _load_robots(self, origin: str) -> RobotFileParser | _Fail:
        """The host's rules, or why they cannot be known (RFC 9309: then fetch nothing)."""
        cfg = self.cfg
        rules = RobotFileParser()
        url = origin + "/robots.txt"
        for _ in range(cfg.max_redirects + 1):
            try:
                url, parts = _canonical(url)
                _, netloc = self._check(url, parts)
            except ValueError as e:
                return _Fail(FAILED, f"robots.txt unavailable: redirect to an invalid URL: {e}")
            except _Fail as f:
                return _Fail(f.status, f"robots.txt unavailable: {f.message}")
            async with self._slot(netloc):
                self.requests += 1
                try:
                    async with asyncio.timeout(cfg.total_timeout):
                        async with self.session.get(self.policy.wire(url), allow_redirects=False) as resp:
                            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                                url = urljoin(url, resp.headers["Location"])
                                continue
                            if 400 <= resp.status < 500:
                                rules.allow_all = True  # no robots.txt: everything is allowed
                                return rules
                            if resp.status != 200:
                                return _Fail(FAILED, f"robots.txt unavailable: HTTP {resp.status}")
                            text = (await resp.content.read(ROBOTS_MAX_BYTES)).decode("utf-8", "replace")
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    f = _failure(e, cfg, url)
                    return _Fail(f.status, f"robots.txt unavailable: {f.message}" if f.status == FAILED else f.message)
            rules.parse(text.splitlines())
            return rules
        return _Fail(FAILED, "robots.txt unavailable: too many redirects")


# ---------------------------------------------------------------------------------------------
# sync entry point


async def fetch_many(urls: list[str], cfg: FetchConfig, accept: str = ACCEPT_IMAGES) -> list[FetchResult]:
    async with Fetcher(cfg, accept) as f:
        return list(await asyncio.gather(*(f.fetch(u) for u in urls)))


def fetch_all(urls: list[str], cfg: FetchConfig | None = None, accept: str = ACCEPT_IMAGES) -> list[FetchResult]:
    """Fetch every URL (in input order) on a private event loop; usable from sync code anywhere."""
    cfg = cfg or FetchConfig()
    urls = list(urls)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fetch_many(urls, cfg, accept))
    # called from inside a running loop (a notebook, an async app): use a thread of our own
    box: list = []
    thread = threading.Thread(target=lambda: box.append(asyncio.run(fetch_many(urls, cfg, accept))), daemon=True)
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError("fetch_all: the fetching thread died")
    return box[0]
