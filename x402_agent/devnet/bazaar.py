"""The facilitator's side of the Bazaar discovery extension, for the local world.

The SDK gives the resource server its declaration (``declare_discovery_extension``, enriched with
the HTTP method by ``bazaar_resource_server_extension``), the facilitator its extraction and
validation (``extract_discovery_info``) and the client its query (``/discovery/resources``), but
leaves the catalog and its HTTP listing to the facilitator. This is that catalog, as the
extension's specification describes it: every payment the facilitator verifies that carries the
server's declaration is catalogued (an ``on_after_verify`` hook on the SDK facilitator), and the
listing is served in the SDK client's wire format (``DiscoveryResource.to_dict``).

At start the world also catalogues each paid route from the route's own 402 answer, through the
same SDK extraction, so the listing is whole before anyone paid (our agent does not echo the
declaration in its payments: only payment-identifier's). In memory, for the life of the world.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Query
from x402 import x402Facilitator
from x402.extensions.bazaar import BAZAAR, DiscoveryResource, extract_discovery_info
from x402.http import PAYMENT_REQUIRED_HEADER, decode_payment_required_header
from x402.schemas import PaymentRequired, PaymentRequirements
from x402.schemas.hooks import VerifyResultContext

from .info import RouteInfo

MAX_PAGE = 1000


class BazaarCatalog:
    """Discovered resources by (method, URL): the newest declaration of each wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], DiscoveryResource] = {}

    def attach(self, facilitator: x402Facilitator) -> None:
        """Catalogue what ``facilitator`` verifies from now on (the SDK's intended trigger)."""
        facilitator.register_extension(BAZAAR)
        facilitator.on_after_verify(self._verified)

    def _verified(self, context: VerifyResultContext) -> None:
        if context.result.is_valid and isinstance(context.requirements, PaymentRequirements):
            self.add(context.payment_payload.model_dump(by_alias=True), [context.requirements])

    def add(self, payload: dict[str, Any], accepts: Sequence[PaymentRequirements]) -> bool:
        """Catalogue one payment (or a 402's first offer shaped as one); False when it carries
        no valid declaration (the SDK's extraction says so)."""
        found = extract_discovery_info(payload, accepts[0])
        if found is None:
            return False
        item = DiscoveryResource(
            resource=found.resource_url,
            type="mcp" if found.tool_name else "http",
            x402_version=found.x402_version,
            accepts=[r.model_dump(by_alias=True, exclude_none=True) for r in accepts],
            last_updated=datetime.now(UTC).isoformat(),
            description=found.description,
            mime_type=found.mime_type,
            service_name=found.service_name,
            tags=found.tags,
            icon_url=found.icon_url,
            extensions={BAZAAR.key: (found.extensions or {}).get(BAZAAR.key)},
        )
        with self._lock:
            self._items[(found.method, found.resource_url)] = item
        return True

    def add_challenge(self, required: PaymentRequired) -> bool:
        """Catalogue a route from its 402: the payload a client would send for its first offer."""
        payload = {
            "x402Version": required.x402_version,
            "resource": required.resource.model_dump(by_alias=True) if required.resource else {},
            "accepted": required.accepts[0].model_dump(by_alias=True),
            "extensions": required.extensions or {},
        }
        return self.add(payload, list(required.accepts))

    def listing(
        self, type_: str | None, network: str | None, scheme: str | None, pay_to: str | None
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items.values())

        def offered(item: DiscoveryResource) -> bool:
            return any(
                (network is None or a.get("network") == network)
                and (scheme is None or a.get("scheme") == scheme)
                and (pay_to is None or str(a.get("payTo", "")).lower() == pay_to.lower())
                for a in item.accepts or []
            )

        return [i.to_dict() for i in items if (type_ is None or i.type == type_) and offered(i)]


def catalogue_routes(catalog: BazaarCatalog, routes: Sequence[RouteInfo]) -> int:
    """Ask each paid v2 route for its 402 and catalogue it; returns how many were catalogued."""
    count = 0
    with httpx.Client(timeout=10.0) as http:
        for route in routes:
            if route.version != 2:
                continue
            answer = http.request(route.method, route.url)
            header = answer.headers.get(PAYMENT_REQUIRED_HEADER)
            if answer.status_code != 402 or header is None:
                raise RuntimeError(f"{route.method} {route.path} answered {answer.status_code}, not a 402")
            required = decode_payment_required_header(header)
            if not isinstance(required, PaymentRequired) or not catalog.add_challenge(required):
                raise RuntimeError(f"{route.method} {route.path} declares no valid bazaar discovery info")
            count += 1
    return count


def create_facilitator_app(catalog: BazaarCatalog, facilitators: Sequence[x402Facilitator]) -> FastAPI:
    """The facilitator's public face: what it supports and the Bazaar listing."""
    app = FastAPI(title="x402 local world (facilitator)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/supported")
    async def supported() -> dict[str, Any]:
        kinds: list[dict[str, Any]] = []
        extensions: set[str] = set()
        signers: dict[str, Any] = {}
        for facilitator in facilitators:
            answer = facilitator.get_supported().model_dump(by_alias=True, exclude_none=True)
            kinds += answer["kinds"]
            extensions |= set(answer["extensions"])
            signers |= answer["signers"]
        return {"kinds": kinds, "extensions": sorted(extensions), "signers": signers}

    @app.get("/discovery/resources")
    async def resources(
        type_: str | None = Query(None, alias="type"),
        network: str | None = None,
        scheme: str | None = None,
        pay_to: str | None = Query(None, alias="payTo"),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        items = catalog.listing(type_, network, scheme, pay_to)
        return {
            "x402Version": 2,
            "items": items[offset : offset + limit],
            "pagination": {"limit": limit, "offset": offset, "total": len(items)},
        }

    return app
