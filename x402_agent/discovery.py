"""Discovery: what a facilitator's Bazaar lists, filtered, each with the policy's verdict.

One page of ``GET <facilitator>/discovery/resources`` (the Bazaar extension's listing) is read
through the same guarded path as fetch and quote: the private-network guard, the policy's host
lists, the request limits, the caller's deadline, and a body cap of its own. Nothing listed is
ever requested, followed or paid: every item's offers go through the checks a 402's offers go
through (``challenge.make_offer``) and the pure policy decision (``selection.assess``), so each
result says whether fetching it would be paid, and if not, why.

The listing is untrusted text from a third party: it is capped in bytes and items, each string
is stripped of control and format characters and cut short, malformed items are counted and
dropped, and the adapters mark what remains as data, never instructions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from pydantic import ValidationError
from x402.schemas import PaymentRequirements
from x402.schemas.v1 import PaymentRequirementsV1

from . import bounded_json
from .challenge import Offer, make_offer
from .decision import Decision, PaymentContext, Usage, decide
from .errors import InvalidRequest, PolicyDenied, UpstreamError, X402AgentError
from .flow import HttpAnswer, HttpCall, Payer, Step, check_host, sha256_hex
from .ledger import PaymentRecord, UsageQuery
from .money import format_units
from .netguard import check_literal
from .networks import caip2
from .policy import Policy
from .reasons import Reason
from .request_limits import check_url
from .selection import PriceLimit, assess
from .spendgate import SpendGate

MAX_LISTING_BYTES = 1024 * 1024
MAX_LISTING_ITEMS = 500  # items looked at; the rest of a longer page is not
MAX_RESULTS = 50
DEFAULT_RESULTS = 20
MAX_OFFERS_PER_ITEM = 8
MAX_TEXT_CHARS = 280
MAX_TAGS = 5
MAX_QUERY_CHARS = 200
_MAX_URL_CHARS = 2048
_MAX_TOTAL = 10**9
_ALL_METHODS = frozenset({"GET", "HEAD", "DELETE", "POST", "PUT", "PATCH"})
# Identifiers the listing names (networks, schemes, non-EVM addresses): a plain token or nothing.
_TOKEN = re.compile(r"[A-Za-z0-9:_.\-]{1,128}")

# What the policy's refusal means for the one looking: the categories a model acts on.
_VERDICTS: dict[Reason, str] = {
    Reason.PER_REQUEST_CAP_EXCEEDED: "over_cap",
    Reason.DAILY_LIMIT_EXCEEDED: "over_cap",
    Reason.SESSION_ALLOWANCE_EXCEEDED: "over_cap",
    Reason.PRICE_ABOVE_MAX: "over_cap",
    Reason.HOST_DENIED: "host_denied",
    Reason.HOST_NOT_ALLOWED: "host_denied",
    Reason.PRIVATE_ADDRESS: "host_denied",
    Reason.NETWORK_DENIED: "network_not_allowed",
    Reason.NETWORK_NOT_ALLOWED: "network_not_allowed",
    Reason.UNKNOWN_NETWORK: "network_not_allowed",
    Reason.UNKNOWN_ASSET: "asset_not_allowed",
    Reason.ASSET_DOMAIN_MISMATCH: "asset_not_allowed",
    Reason.SCHEME_NOT_ALLOWED: "asset_not_allowed",
    Reason.UNSUPPORTED_SCHEME: "asset_not_allowed",
    Reason.SESSION_ASSET_NOT_ALLOWED: "asset_not_allowed",
    Reason.MAX_PRICE_ASSET_MISMATCH: "asset_not_allowed",
}
# Refusals that say "we cannot pay this at all": another offer's policy refusal says more.
_UNPAYABLE = frozenset({Reason.UNSUPPORTED_SCHEME, Reason.UNKNOWN_NETWORK, Reason.UNKNOWN_ASSET})


@dataclass(frozen=True)
class DiscoveryRequest:
    facilitator_url: str
    query: str | None = None
    max_price: PriceLimit | None = None
    network: str | None = None
    limit: int = DEFAULT_RESULTS
    session: str | None = None
    session_profile: str | None = None
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Discovery:
    """The matching items (each a plain dict, see ``_item``) and what was left out, and why."""

    facilitator_url: str
    items: list[dict[str, Any]]
    listed_total: int | None  # what the facilitator says it lists (its claim)
    examined: int  # items read from the page
    matched: int  # items that passed the filters (``items`` holds the first ``limit``)
    skipped: dict[str, int] = field(default_factory=dict)  # malformed items, by what was wrong
    truncated: bool = False  # more matched, or the page had more items than were read
    policy_version: int | None = None


def clean_text(value: object, limit: int = MAX_TEXT_CHARS) -> str | None:
    """Listing text as a single short line: control, format (bidi, zero-width) and private-use
    characters dropped, any run of whitespace one space, cut at ``limit`` (marked by '...')."""
    if not isinstance(value, str):
        return None
    head = value[: limit * 4]
    if not head.isprintable():  # a control, format or separator character: the slow pass
        kept = (" " if c.isspace() else c for c in head)
        head = "".join(c for c in kept if unicodedata.category(c)[0] != "C")
    text = " ".join(head.split())
    if len(text) > limit or len(value) > limit * 4:
        text = text[: limit - 3].rstrip() + "..."
    return text or None


def check_discovery(req: DiscoveryRequest) -> None:
    """The arguments' limits, before anything is sent."""
    check_url(req.facilitator_url)
    if req.query is not None and (not isinstance(req.query, str) or len(req.query) > MAX_QUERY_CHARS):
        raise InvalidRequest(
            f"query must be text of at most {MAX_QUERY_CHARS} characters", reason=Reason.INVALID_ARGUMENTS
        )
    if req.network is not None and (not isinstance(req.network, str) or not _TOKEN.fullmatch(req.network)):
        raise InvalidRequest("network must be a network id like eip155:8453", reason=Reason.INVALID_ARGUMENTS)
    if not isinstance(req.limit, int) or isinstance(req.limit, bool) or not 1 <= req.limit <= MAX_RESULTS:
        raise InvalidRequest(
            f"limit must be a whole number from 1 to {MAX_RESULTS}",
            reason=Reason.INVALID_LIMIT,
            maximum=MAX_RESULTS,
        )


def listing_url(facilitator_url: str, network: str | None) -> str:
    params = {"type": "http", "limit": str(MAX_LISTING_ITEMS)}
    if network is not None:
        params["network"] = network
    return facilitator_url.rstrip("/") + "/discovery/resources?" + urlencode(params)


def discover_flow(payer: Payer, req: DiscoveryRequest) -> Generator[Step, Any, Discovery]:
    """Read the listing, keep what matches, judge each item by the policy; pays nothing."""
    policy = payer.gate.policy
    check_literal(req.facilitator_url, policy.private_allow)  # as fetch_flow: first
    check_discovery(req)
    check_host(payer, req.facilitator_url)
    network = None if req.network is None else caip2(req.network) or req.network
    url = listing_url(req.facilitator_url, network)
    request = httpx.Request("GET", url, headers={"Accept": "application/json"})
    # One request, no redirect followed: a listing that moved is the facilitator's to fix.
    answer: HttpAnswer = yield HttpCall(request, max_bytes=MAX_LISTING_BYTES)
    raw_items, total = parse_listing(answer, req.facilitator_url)
    skipped: dict[str, int] = {}
    matched: list[dict[str, Any]] = []
    gate = _ListingGate(payer.gate, payer.clock())
    for raw in raw_items[:MAX_LISTING_ITEMS]:
        try:
            item = _item(gate, req, raw, network, payer.signer)
        except _Skip as skip:
            skipped[skip.why] = skipped.get(skip.why, 0) + 1
            continue
        if item is not None:
            matched.append(item)
    return Discovery(
        facilitator_url=req.facilitator_url,
        items=matched[: req.limit],
        listed_total=total,
        examined=min(len(raw_items), MAX_LISTING_ITEMS),
        matched=len(matched),
        skipped=skipped,
        truncated=len(matched) > req.limit or len(raw_items) > MAX_LISTING_ITEMS,
        policy_version=policy.version,
    )


def parse_listing(answer: HttpAnswer, facilitator_url: str) -> tuple[list[Any], int | None]:
    host = urlsplit(facilitator_url).hostname or ""
    if answer.status_code != 200:
        raise UpstreamError(
            f"the facilitator at {host} answered {answer.status_code} to its discovery listing",
            reason=Reason.DISCOVERY_UNAVAILABLE,
            status=answer.status_code,
        )
    try:
        data = bounded_json.loads(answer.content)
    except (ValueError, UnicodeError) as exc:
        raise UpstreamError(
            f"the facilitator at {host} answered its listing with something that is not JSON",
            reason=Reason.DISCOVERY_INVALID,
        ) from exc
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UpstreamError(
            f"the facilitator at {host} answered a JSON document without a list of items",
            reason=Reason.DISCOVERY_INVALID,
        )
    pagination = data.get("pagination")
    total = pagination.get("total") if isinstance(pagination, dict) else None
    # A count no listing could hold is not a count: it is not repeated to the model.
    return items, total if type(total) is int and 0 <= total <= _MAX_TOTAL else None


class _ListingGate:
    """The payer's gate for one listing: the policy and the time read once, the ledger's usage
    once per asset and session rather than once per listed offer (a full listing would be a
    thousand reads, each a round trip on a PostgreSQL ledger). It never reserves."""

    def __init__(self, gate: SpendGate, now: float) -> None:
        self.policy = gate.policy
        self.ledger = gate.ledger
        self._now = now
        self._usage: dict[tuple[str, str, str | None], Usage] = {}

    def evaluate(self, offer: Offer, context: PaymentContext, *, with_usage: bool = True) -> Decision:
        policy, now = self.policy, self._now
        if not with_usage or policy.find_asset(offer.network, offer.asset) is None:
            return decide(policy, offer, context, Usage(), now)
        key = (offer.network, offer.asset, context.session)
        if key not in self._usage:
            query = UsageQuery(offer.network, offer.asset, policy.day.start(now), now, context.session)
            self._usage[key] = self.ledger.usage(query)
        return decide(policy, offer, context, self._usage[key], now)

    def reserve(self, offer: Offer, context: PaymentContext, *, approved: bool = False) -> PaymentRecord:
        raise PolicyDenied("discovery pays nothing", reason=Reason.POLICY_DENIED)

    def pinned(self) -> SpendGate:
        return self  # its policy is read once already


class _Skip(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


def _resource(raw: Mapping[str, Any]) -> str:
    resource = raw.get("resource")
    if (
        not isinstance(resource, str)
        or len(resource) > _MAX_URL_CHARS
        or clean_text(resource, _MAX_URL_CHARS) != resource
    ):
        raise _Skip("bad_resource")
    try:
        check_url(resource)
    except InvalidRequest as exc:
        raise _Skip("bad_resource") from exc
    return resource


def _offers(raw: Mapping[str, Any]) -> tuple[int, list[Offer], int]:
    """The item's version, its offers that pass a 402 offer's checks, and how many did not."""
    version = raw.get("x402Version")
    if type(version) is not int or version not in (1, 2):
        raise _Skip("bad_version")
    accepts = raw.get("accepts")
    if not isinstance(accepts, list) or not accepts:
        raise _Skip("no_offers")
    model = PaymentRequirements if version == 2 else PaymentRequirementsV1
    offers: list[Offer] = []
    for index, accept in enumerate(accepts[:MAX_OFFERS_PER_ITEM]):
        if not isinstance(accept, dict) or not all(
            isinstance(accept.get(k), str) and _TOKEN.fullmatch(accept[k])
            for k in ("scheme", "network", "asset", "payTo")
        ):
            continue
        try:
            offers.append(make_offer(index, version, model.model_validate(accept)))
        except (ValidationError, X402AgentError):
            continue
    if not offers:
        raise _Skip("bad_offers")
    return version, offers, len(accepts) - len(offers)


def _method(raw: Mapping[str, Any]) -> str:
    """The HTTP method the server declared (the bazaar extension's info), GET when none."""
    extensions = raw.get("extensions")
    bazaar = extensions.get("bazaar") if isinstance(extensions, dict) else None
    info = bazaar.get("info") if isinstance(bazaar, dict) else None
    given = info.get("input") if isinstance(info, dict) else None
    method = given.get("method") if isinstance(given, dict) else None
    return method if isinstance(method, str) and method in _ALL_METHODS else "GET"


def _matches(query: str | None, *texts: str | None) -> bool:
    if not query:
        return True
    haystack = " ".join(t for t in texts if t).lower()
    return all(term in haystack for term in query.lower().split())


def _item(
    gate: _ListingGate, req: DiscoveryRequest, raw: object, network: str | None, signer: object
) -> dict[str, Any] | None:
    """One listed resource as a result, None when the filters leave it out; _Skip if malformed."""
    if not isinstance(raw, dict):
        raise _Skip("not_an_object")
    if raw.get("type", "http") != "http":
        raise _Skip("not_http")
    resource = _resource(raw)
    version, offers, invalid = _offers(raw)
    description = clean_text(raw.get("description"))
    service = clean_text(raw.get("serviceName"), 64)
    tags = raw.get("tags")
    tag_list = (
        [t for t in (clean_text(tag, 32) for tag in tags[:MAX_TAGS]) if t] if isinstance(tags, list) else []
    )
    if not _matches(req.query, resource, description, service, *tag_list):
        return None
    policy = gate.policy
    if network is not None:
        offers = [o for o in offers if o.network == network]
    if req.max_price is not None:
        offers = [o for o in offers if _within(o, req.max_price, policy)]
    if not offers:
        return None
    method = _method(raw)
    host = (urlsplit(resource).hostname or "").lower()
    context = PaymentContext(
        method=method,
        url=resource,
        host=host,
        request_body_sha256=sha256_hex(None),
        request_fingerprint=sha256_hex(f"{method} {resource}".encode()),
        session=req.session,
        session_profile=req.session_profile,
    )
    try:
        check_literal(resource, policy.private_allow)  # fetch would refuse it before sending
        judged = [(offer, assess(offer, gate, context, req.max_price, signer=signer)) for offer in offers]
    except X402AgentError as exc:
        judged = [(offer, Decision(False, exc.reason, exc.message)) for offer in offers]
    best, decision = _verdict(judged)
    return {
        "resource": resource,
        "method": method,
        "x402_version": version,
        "description": description,
        "service_name": service,
        "tags": tag_list,
        "mime_type": clean_text(raw.get("mimeType"), 64),
        **_judgement(policy, best, decision),
        "offers": [_option(offer, d) for offer, d in judged],
        "offers_invalid": invalid,
    }


def _within(offer: Offer, limit: PriceLimit, policy: Policy) -> bool:
    rule = policy.find_asset(offer.network, offer.asset)
    ceiling = limit.atomic_for(rule) if rule is not None else None
    return ceiling is not None and offer.amount <= ceiling


def _verdict(judged: list[tuple[Offer, Decision]]) -> tuple[Offer, Decision]:
    """The offer fetch would pay (the cheapest allowed), else the most telling refusal."""
    allowed = [
        (Fraction(o.amount, 10**d.asset.decimals), o.index, o, d) for o, d in judged if d.allowed and d.asset
    ]
    if allowed:
        # Compared in display units, ties in listed order: the choice fetch makes (selection.rank).
        _, _, offer, decision = min(allowed, key=lambda ranked: ranked[:2])
        return offer, decision
    by_policy = [(o, d) for o, d in judged if d.reason not in _UNPAYABLE]
    return (by_policy or judged)[0]


def _category(policy: Policy, offer: Offer, decision: Decision) -> str:
    if decision.allowed:
        return "approval_needed" if decision.needs_approval else "allowed"
    if decision.reason in (Reason.UNKNOWN_ASSET, Reason.UNKNOWN_NETWORK) and not any(
        rule.network == offer.network for rule in policy.assets
    ):
        return "network_not_allowed"  # nothing the policy pays in lives on that network
    return _VERDICTS.get(decision.reason, "refused")


def _judgement(policy: Policy, offer: Offer, decision: Decision) -> dict[str, Any]:
    rule = decision.asset
    return {
        "verdict": _category(policy, offer, decision),
        "reason": str(decision.reason),
        "message": clean_text(decision.message, 200),
        "scheme": offer.scheme,
        "network": offer.network,
        "asset": offer.asset,
        "pay_to": offer.pay_to,
        "amount": str(offer.amount),
        "decimals": rule.decimals if rule else None,
        "symbol": rule.symbol if rule else None,
        "price": f"{format_units(offer.amount, rule.decimals)} {rule.symbol}" if rule else None,
    }


def _option(offer: Offer, decision: Decision) -> dict[str, Any]:
    rule = decision.asset
    return {
        **offer.describe(),
        "symbol": rule.symbol if rule else None,
        "price": format_units(offer.amount, rule.decimals) if rule else None,
        "allowed": decision.allowed,
        "reason": str(decision.reason),
    }
