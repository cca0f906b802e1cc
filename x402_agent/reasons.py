"""Every outcome code any layer returns, in one enum: what it means and what to do next.

A ``Reason`` is a ``StrEnum``: on the wire (JSON, MCP, LangChain, the CLI) it is the plain code
string. Each member carries ``message`` (what the code means) and ``next_step`` (what a model or
a user can do about it). The errors (``errors.py``), the policy decision, the offer selection,
the wallet, the device, the flow and the argument checks all return members; the adapters, the
CLI and ``docs/reasons.md`` render from here (``python -m x402_agent.reasons`` writes the doc).

Imports nothing but the standard library: the pure policy decision and the MCP server's cold
start use it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Layer(StrEnum):
    """Where an outcome comes from (the groups of the rendered lists)."""

    DECISION = "spending policy"
    SELECTION = "the server's offer"
    VALIDATION = "arguments"
    FLOW = "the request and its payment"
    WALLET = "wallet and chain"
    DEVICE = "hardware wallet"
    SETUP = "agent home and policy files"


class Reason(StrEnum):
    """An outcome code. ``Reason.X.next_step`` may name limits (filled in from
    ``request_limits`` when read, so the numbers have one home)."""

    layer: Layer
    message: str
    _next_step: str

    def __new__(cls, code: str, layer: Layer, message: str, next_step: str) -> Reason:
        member = str.__new__(cls, code)
        member._value_ = code
        member.layer = layer
        member.message = message
        member._next_step = next_step
        return member

    @property
    def next_step(self) -> str:
        return self._next_step.format_map(_limits()) if "{" in self._next_step else self._next_step

    @classmethod
    def of(cls, code: object) -> Reason | None:
        """The member for a code read back from JSON or a record (None if it is not one)."""
        return _BY_CODE.get(str(code))

    # ---- outcomes that are not refusals (quotes) ----------------------------------------------
    ALLOWED = (
        "allowed",
        Layer.DECISION,
        "the policy would pay this offer",
        "fetch it (give an idempotency_key); nothing above max_price is paid",
    )
    FREE = ("free", Layer.DECISION, "the resource asked for no payment", "fetch it: nothing will be paid")

    # ---- the spending policy (decision) -------------------------------------------------------
    PER_REQUEST_CAP_EXCEEDED = (
        "per_request_cap_exceeded",
        Layer.DECISION,
        "the price is above the per-request cap",
        "the price is above the policy's per-request cap: do not retry; look for a cheaper "
        "resource or ask the user",
    )
    DAILY_LIMIT_EXCEEDED = (
        "daily_limit_exceeded",
        Layer.DECISION,
        "the price is above what remains today",
        "today's budget is spent: stop paying until the day resets",
    )
    RATE_LIMITED = (
        "rate_limited",
        Layer.DECISION,
        "too many payments in the last minute",
        "too many payments in the last minute: wait, then retry",
    )
    CIRCUIT_OPEN = (
        "circuit_open",
        Layer.DECISION,
        "payments are stopped after failed, unknown or contradicted settlements",
        "payments are stopped after repeated failures: a human must reset the breaker",
    )
    HOST_DENIED = (
        "host_denied",
        Layer.DECISION,
        "the host is on the policy's deny list",
        "the policy does not allow paying this host: do not retry; tell the user",
    )
    HOST_NOT_ALLOWED = (
        "host_not_allowed",
        Layer.DECISION,
        "the host is not on the policy's allow list",
        "the policy does not allow paying this host",
    )
    NETWORK_DENIED = (
        "network_denied",
        Layer.DECISION,
        "the offer's network is on the policy's deny list",
        "the policy does not pay on this network: look for another offer",
    )
    NETWORK_NOT_ALLOWED = (
        "network_not_allowed",
        Layer.DECISION,
        "the offer's network is not on the policy's allow list",
        "the policy does not pay on this network: look for another offer",
    )
    PAYEE_DENIED = (
        "payee_denied",
        Layer.DECISION,
        "the payee is on the policy's deny list",
        "the policy does not allow paying this payee: do not retry",
    )
    PAYEE_NOT_ALLOWED = (
        "payee_not_allowed",
        Layer.DECISION,
        "the payee is not on the policy's allow list",
        "the policy does not allow paying this payee",
    )
    UNKNOWN_ASSET = (
        "unknown_asset",
        Layer.DECISION,
        "the offer's asset is not in the policy",
        "the policy pays only in its own assets: look for another offer or ask "
        "the user to add the asset (device-approved)",
    )
    SESSION_UNKNOWN = (
        "session_unknown",
        Layer.DECISION,
        "the session profile is not in the policy",
        "this session has expired or is unknown: start a new MCP connection or toolkit",
    )
    SESSION_EXPIRED = (
        "session_expired",
        Layer.DECISION,
        "the session's lifetime ended",
        "this session's lifetime ended: over MCP a new session (with a fresh allowance) starts "
        "at your next call, so tell the user, then retry the call with the same "
        "idempotency_key; a toolkit needs a new session",
    )
    SESSION_SCOPE = (
        "session_scope",
        Layer.DECISION,
        "the host, URL, payee, network or asset is outside this session's scope",
        "this session may not pay for that: stay within its scope or ask the user",
    )
    SESSION_ASSET_NOT_ALLOWED = (
        "session_asset_not_allowed",
        Layer.DECISION,
        "the session has no allowance in this asset",
        "this session may not pay in that asset",
    )
    SESSION_ALLOWANCE_EXCEEDED = (
        "session_allowance_exceeded",
        Layer.DECISION,
        "the session's allowance is spent",
        "this session's allowance is spent: stop paying and tell the user",
    )
    APPROVAL_REQUIRED = (
        "approval_required",
        Layer.DECISION,
        "the payment needs a human approval",
        "the payment needs a human approval that could not be given here: ask the user to "
        "confirm it on the enrolled hardware device (plugged in and unlocked) or through the "
        "host's approval prompt, then retry; typing an answer into the agent's input never "
        "approves a payment",
    )
    APPROVAL_DENIED = (
        "approval_denied",
        Layer.DECISION,
        "a human rejected the payment",
        "a human rejected the payment: do not retry it",
    )
    APPROVAL_UNVERIFIED = (
        "approval_unverified",
        Layer.DECISION,
        "the payment's confirmation was not signed by the enrolled device",
        "the device that answered is not the enrolled one (or its signature is invalid): "
        "check which device is plugged in (x402-agent device list) and tell the user; another "
        "device or program may be posing as theirs",
    )
    PRIVATE_ADDRESS = (
        "private_address",
        Layer.DECISION,
        "the URL points into the machine's own or a private network",
        "the URL points into the machine's own or a private network, which the agent never "
        "fetches: do not retry with another spelling; only the user can opt the address in "
        "(policy private_network.allow, device-approved)",
    )
    POLICY_DENIED = (
        "policy_denied",
        Layer.DECISION,
        "the spending policy refused the payment",
        "the policy refused: read the message, do not retry unchanged",
    )

    SCHEME_NOT_ALLOWED = (
        "scheme_not_allowed",
        Layer.DECISION,
        "the policy does not let this asset be paid with the offer's payment scheme",
        "pay an offer in a scheme the policy's asset lists (default: exact), or have the "
        "policy changed and approved on the device",
    )

    # ---- the server's offer (challenge and selection) -----------------------------------------
    PRICE_ABOVE_MAX = (
        "price_above_max",
        Layer.SELECTION,
        "the price is above your max_price",
        "the price is above the max_price you gave: raise max_price only if the "
        "user agreed, or skip the resource",
    )
    MAX_PRICE_ASSET_MISMATCH = (
        "max_price_asset_mismatch",
        Layer.SELECTION,
        "max_price names an asset the resource is not sold in",
        "max_price names an asset this resource is not sold in: give the ceiling in the "
        "offered asset (see quote) or as a bare number",
    )
    UNSUPPORTED_SCHEME = (
        "unsupported_scheme",
        Layer.SELECTION,
        "the offer uses a payment scheme this wallet does not pay",
        "this resource cannot be paid by this wallet: skip it",
    )
    UNKNOWN_NETWORK = (
        "unknown_network",
        Layer.SELECTION,
        "the offer's network is not one this wallet knows",
        "this resource cannot be paid by this wallet: skip it",
    )
    ASSET_DOMAIN_MISMATCH = (
        "asset_domain_mismatch",
        Layer.SELECTION,
        "the server names a token domain other than the policy's",
        "the server describes a different token than the policy's: do not pay; tell the user",
    )
    NO_ACCEPTABLE_REQUIREMENT = (
        "no_acceptable_requirement",
        Layer.SELECTION,
        "no offer in the challenge can be paid",
        "none of the offers can be paid (details.rejected says why for each): skip the resource",
    )
    MALFORMED_CHALLENGE = (
        "malformed_challenge",
        Layer.SELECTION,
        "the server's payment challenge cannot be understood",
        "the server's 402 answer is not usable x402: nothing was paid; skip the resource or report it",
    )
    UNDECODABLE_CHALLENGE = (
        "undecodable_challenge",
        Layer.SELECTION,
        "the payment challenge is not valid base64 JSON",
        "the server's 402 answer is not usable x402: nothing was paid; skip the resource or report it",
    )
    OVERSIZED_CHALLENGE = (
        "oversized_challenge",
        Layer.SELECTION,
        "the payment challenge is too large",
        "the server's 402 answer is not usable x402: nothing was paid; skip the resource",
    )
    EMPTY_CHALLENGE = (
        "empty_challenge",
        Layer.SELECTION,
        "the challenge offers no way to pay",
        "the server offers no way to pay: skip the resource",
    )
    UNSUPPORTED_X402_VERSION = (
        "unsupported_x402_version",
        Layer.SELECTION,
        "the challenge's x402 version is not supported",
        "this resource cannot be paid by this wallet: skip it",
    )
    RESOURCE_MISMATCH = (
        "resource_mismatch",
        Layer.SELECTION,
        "the challenge is for another resource than the URL asked for",
        "the server asks payment for something else: do not pay; skip it",
    )
    AMOUNT_OVERFLOW = (
        "amount_overflow",
        Layer.SELECTION,
        "the amount does not fit uint256",
        "the server's price is not a usable amount: skip the resource",
    )
    INVALID_AMOUNT = (
        "invalid_amount",
        Layer.SELECTION,
        "the amount is zero or not a number",
        "the server's price is not a usable amount: skip the resource",
    )
    INVALID_ADDRESS = (
        "invalid_address",
        Layer.SELECTION,
        "an address in the offer is not a usable EVM address",
        "the server's offer is malformed: skip the resource",
    )

    # ---- the caller's arguments (validation) --------------------------------------------------
    INVALID_ARGUMENTS = (
        "invalid_arguments",
        Layer.VALIDATION,
        "the arguments do not fit the tool's schema",
        "the arguments do not fit the tool's schema: fix their names and types",
    )
    INVALID_REQUEST = (
        "invalid_request",
        Layer.VALIDATION,
        "the request cannot be made as given",
        "fix the request as the message says, then retry",
    )
    INVALID_MAX_PRICE = (
        "invalid_max_price",
        Layer.VALIDATION,
        "max_price cannot be read",
        "max_price must be a positive decimal like '0.05' or '0.05 USDC'",
    )
    UNSUPPORTED_URL = (
        "unsupported_url",
        Layer.VALIDATION,
        "the URL is not http(s) with a host",
        "only http:// and https:// URLs with a host can be fetched",
    )
    INVALID_URL = (
        "invalid_url",
        Layer.VALIDATION,
        "the URL cannot be parsed",
        "the URL could not be parsed: check brackets, port and characters",
    )
    URL_TOO_LONG = (
        "url_too_long",
        Layer.VALIDATION,
        "the URL is too long",
        "URLs are limited to {MAX_URL_CHARS} characters: send large parameters in a POST body",
    )
    INVALID_METHOD = (
        "invalid_method",
        Layer.VALIDATION,
        "the HTTP method is not allowed",
        "use one of {ALLOWED_METHODS}",
    )
    READ_ONLY_METHOD = (
        "read_only_method",
        Layer.VALIDATION,
        "quotes send only GET or HEAD",
        "quoting sends only GET or HEAD: to price another method, fetch it with "
        "a max_price (nothing is paid above it)",
    )
    HEADER_INJECTION = (
        "header_injection",
        Layer.VALIDATION,
        "a header contains a line break",
        "header names and values may not contain line breaks",
    )
    INVALID_HEADER = (
        "invalid_header",
        Layer.VALIDATION,
        "a header is not a valid HTTP field",
        "headers must be valid HTTP tokens with printable ASCII values",
    )
    RESERVED_HEADER = (
        "reserved_header",
        Layer.VALIDATION,
        "a header is set by the HTTP client or the wallet",
        "Host, Content-Length, Transfer-Encoding, Connection, other hop-by-hop "
        "and Proxy-* headers are set by the HTTP client, payment headers by the "
        "wallet: leave them out",
    )
    TOO_MANY_HEADERS = (
        "too_many_headers",
        Layer.VALIDATION,
        "too many headers",
        "send at most {MAX_HEADERS} headers",
    )
    HEADER_TOO_LARGE = (
        "header_too_large",
        Layer.VALIDATION,
        "a header or all headers are too large",
        "a header value may have {MAX_HEADER_VALUE_CHARS} characters, "
        "all headers together {MAX_HEADERS_TOTAL_CHARS}",
    )
    INVALID_BODY = ("invalid_body", Layer.VALIDATION, "the body is not text", "the body must be text")
    BODY_TOO_LARGE = (
        "body_too_large",
        Layer.VALIDATION,
        "the request body is too large",
        "request bodies are limited to {MAX_BODY_BYTES} bytes",
    )
    BODY_FILE_UNREADABLE = (
        "body_file_unreadable",
        Layer.VALIDATION,
        "the body file cannot be read",
        "the body file could not be read: give a readable file, not a directory",
    )
    INVALID_IDEMPOTENCY_KEY = (
        "invalid_idempotency_key",
        Layer.VALIDATION,
        "the idempotency key is not a short printable token",
        "use 1 to {MAX_KEY_CHARS} letters, digits or ._:~+/=@- (a UUID works), or leave the key out",
    )
    INVALID_SESSION = (
        "invalid_session",
        Layer.VALIDATION,
        "the session name is not a short printable token",
        "session names are 1 to {MAX_KEY_CHARS} letters, digits or ._:~+/=@-",
    )
    INVALID_LIMIT = (
        "invalid_limit",
        Layer.VALIDATION,
        "the receipts limit is out of range",
        "ask for a whole number of receipts within the stated range",
    )
    INVALID_STATE = (
        "invalid_state",
        Layer.VALIDATION,
        "the receipt state is not one we know",
        "state must be one of reserved, sent, settled, released, unknown",
    )
    INVALID_TIMEOUT = (
        "invalid_timeout",
        Layer.VALIDATION,
        "the timeout is out of range (or the server's maxTimeoutSeconds is)",
        "timeout_seconds must be a number from {MIN_TIMEOUT_SECONDS:g} to {MAX_TIMEOUT_SECONDS:g}",
    )
    IDEMPOTENCY_KEY_CONFLICT = (
        "idempotency_key_conflict",
        Layer.VALIDATION,
        "the idempotency key was used for another request",
        "that idempotency key was used for another request: use a new key",
    )

    # ---- the request and its payment (flow) ---------------------------------------------------
    UPSTREAM_UNREACHABLE = (
        "upstream_unreachable",
        Layer.FLOW,
        "the server could not be reached or answered unusably",
        "the server could not be reached; nothing was paid: retry later",
    )
    DEADLINE_EXCEEDED = (
        "deadline_exceeded",
        Layer.FLOW,
        "no answer within the timeout; nothing was paid",
        "the server did not answer within the timeout and nothing was paid: retry later, or "
        "with a larger timeout_seconds if it is known to be slow",
    )
    RESPONSE_TOO_LARGE = (
        "response_too_large",
        Layer.FLOW,
        "the response body is larger than the limit",
        "the resource is too large to fetch here: nothing more was read",
    )
    DISCOVERY_UNAVAILABLE = (
        "discovery_unavailable",
        Layer.FLOW,
        "the facilitator did not answer its Bazaar listing",
        "the facilitator's discovery listing is not available: retry later or try another "
        "facilitator_url; nothing was paid",
    )
    DISCOVERY_INVALID = (
        "discovery_invalid",
        Layer.FLOW,
        "the facilitator's answer is not a Bazaar listing",
        "the facilitator answered something that is not a discovery listing: do not use it; "
        "try another facilitator_url",
    )
    CROSS_ORIGIN_REDIRECT = (
        "cross_origin_redirect",
        Layer.FLOW,
        "a redirect would have left the origin",
        "the server redirects to another origin, which is not followed: "
        "fetch the other URL yourself if you trust it",
    )
    TOO_MANY_REDIRECTS = (
        "too_many_redirects",
        Layer.FLOW,
        "too many redirects",
        "the server redirects in a loop: skip the resource",
    )
    PAYMENT_IN_FLIGHT = (
        "payment_in_flight",
        Layer.FLOW,
        "a payment with this idempotency key is in progress",
        "a payment with this idempotency key is still in flight: retry later with the same key",
    )
    PAID_NOT_DELIVERED = (
        "paid_not_delivered",
        Layer.FLOW,
        "paid, but the resource did not arrive",
        "the payment was sent but the resource was not delivered; the amount stays counted: "
        "report it to the user with the receipt id, do not pay again",
    )
    PAID_DEADLINE_EXCEEDED = (
        "paid_deadline_exceeded",
        Layer.FLOW,
        "paid, but the answer did not arrive in time",
        "the payment was sent but the answer did not arrive in time; it stays counted: retry "
        "with the same idempotency_key (the same payment is resent, never a second one); "
        "without a key do not fetch again, report the receipt id",
    )
    INTERRUPTED = (
        "interrupted",
        Layer.FLOW,
        "interrupted after the payment was sent",
        "the payment stays counted until the chain shows it settled or expired: "
        "see receipts, do not pay again",
    )
    PAYMENT_REJECTED = (
        "payment_rejected",
        Layer.FLOW,
        "the server refused the payment",
        "the server refused the payment (details.server_reason) and nothing settled; it stays "
        "counted until details.expires_at_iso: tell the user the reason; do not retry until "
        "it is fixed",
    )
    PAYMENT_IDENTIFIER_CONFLICT = (
        "payment_identifier_conflict",
        Layer.FLOW,
        "the server says this payment identifier was used for another payment",
        "the server answered 409: the payment identifier (details.payment_identifier) was used "
        "with another payment, so it took nothing from this one and nothing was signed again; "
        "it stays counted until details.expires_at_iso unless the chain shows it settled: "
        "report the receipt id, do not retry it",
    )
    PAYMENT_NOT_SETTLED = (
        "payment_not_settled",
        Layer.FLOW,
        "the server failed without taking the payment",
        "the server failed without taking the payment; it stays counted until "
        "details.expires_at_iso: retry with the same idempotency_key (the same payment is "
        "resent), or report the receipt id",
    )
    PAYMENT_MISMATCH = (
        "payment_mismatch",
        Layer.FLOW,
        "what would be signed differs from the chosen offer",
        "nothing was sent: report it; do not retry",
    )
    SIGNED_PAYMENT_MISMATCH = (
        "signed_payment_mismatch",
        Layer.FLOW,
        "the signed payment differs from the chosen offer",
        "nothing was sent: report it; do not retry",
    )
    SETTLEMENT_MISMATCH = (
        "settlement_mismatch",
        Layer.FLOW,
        "the settlement does not match what was paid",
        "the server's settlement does not match what was paid: the amount stays counted; "
        "report the receipt id to the user, do not pay again",
    )
    SETTLED_AMOUNT_MISMATCH = (
        "settled_amount_mismatch",
        Layer.FLOW,
        "the chain moved another amount than the server says settled",
        "the settlement transaction moved a different amount than the server reported: the "
        "payment stays counted at its maximum; report the receipt id to the user",
    )
    PERMIT2_ALLOWANCE_REQUIRED = (
        "permit2_allowance_required",
        Layer.WALLET,
        "the payer has not approved Permit2 for enough of the token and cannot do it here",
        "approve Permit2 (0x000000000022D473030F116dDEE9F6B43aC78BA3) for a bounded amount of "
        "the token from the paying account (a smart account: through its owner or top-up), "
        "then retry",
    )
    PERMIT2_APPROVAL_PENDING = (
        "permit2_approval_pending",
        Layer.WALLET,
        "the payer's Permit2 approval was sent but is not mined yet",
        "the Permit2 approval transaction is not mined yet: retry in a few seconds (nothing was paid)",
    )
    PERMIT2_UNSUPPORTED_SIGNER = (
        "permit2_unsupported_signer",
        Layer.WALLET,
        "this payer cannot sign Permit2 transfers",
        "this wallet's payer cannot sign Permit2 payments: pay an offer with another transfer "
        "method, or use a plain key or a smart account that supports Permit2",
    )
    SETTLEMENT_NOT_OURS = (
        "settlement_not_ours",
        Layer.FLOW,
        "the named transaction did not move this payment",
        "the transaction the server named did not move this payment: the breaker is open; "
        "report the receipt id to the user",
    )
    CHANNEL_DEPOSIT_NOT_ALLOWED = (
        "channel_deposit_not_allowed",
        Layer.DECISION,
        "opening a payment channel needs a deposit the policy does not allow",
        "the policy sets no (or a too small) max_channel_deposit for this asset: the user raises it "
        "on the device, or pay an offer of another scheme",
    )
    CHANNEL_EXHAUSTED = (
        "channel_exhausted",
        Layer.FLOW,
        "the channel's deposit does not cover this request's voucher",
        "the channel's deposit is used up: ask the server for a refund of the channel "
        "(channels refund) and pay again, which opens a new deposit",
    )
    CHANNEL_CLAIM_ABOVE_VOUCHERS = (
        "channel_claim_above_vouchers",
        Layer.FLOW,
        "the server claims more from the channel than the vouchers this wallet signed",
        "the server claims more than was signed: the breaker is open and nothing more is signed "
        "for it; report the receipt id to the user and withdraw the channel (channels watch)",
    )
    CHANNEL_RESYNCED = (
        "channel_resynced",
        Layer.FLOW,
        "the server's channel total differed; the wallet followed its lower or proven total",
        "retry the same request: the next voucher continues from the server's total",
    )
    SETTLEMENT_REVERTED = (
        "settlement_reverted",
        Layer.FLOW,
        "the settlement transaction reverted",
        "the settlement transaction reverted: the breaker is open; report the receipt id to the user",
    )
    SETTLEMENT_TX_NOT_FOUND = (
        "settlement_tx_not_found",
        Layer.FLOW,
        "the named transaction is not on chain",
        "the transaction the server named does not exist on chain: the breaker is open; "
        "report the receipt id to the user",
    )
    LEDGER_ERROR = (
        "ledger_error",
        Layer.FLOW,
        "the ledger could not record a state change",
        "nothing was paid without a record: tell the user the ledger is failing",
    )
    INVALID_TRANSITION = (
        "invalid_transition",
        Layer.FLOW,
        "the ledger refused a payment state change",
        "tell the user: the ledger and this payment disagree",
    )
    NONCE_REUSED = (
        "nonce_reused",
        Layer.FLOW,
        "a payment nonce was already recorded",
        "nothing was sent: retry the call",
    )
    INTERNAL_ERROR = (
        "internal_error",
        Layer.FLOW,
        "an unexpected failure inside the agent",
        "report it to the user with the message; check receipts before paying again",
    )
    X402_AGENT_ERROR = (
        "x402_agent_error",
        Layer.FLOW,
        "a failure without a finer code",
        "report the message to the user",
    )

    # ---- wallet and chain ---------------------------------------------------------------------
    CHAIN_UNAVAILABLE = (
        "chain_unavailable",
        Layer.WALLET,
        "the chain RPC failed",
        "the chain cannot be read now: retry later",
    )
    ONCHAIN_BOUND = (
        "onchain_bound",
        Layer.WALLET,
        "the smart account's on-chain bounds refuse the payment",
        "the wallet's on-chain limits refuse this payment: tell the user",
    )
    ONCHAIN_TOKEN = (
        "onchain_token",
        Layer.WALLET,
        "the smart account does not pay this token",
        "the wallet's on-chain limits refuse this token: look for another offer",
    )
    ONCHAIN_CAP = (
        "onchain_cap",
        Layer.WALLET,
        "above the smart account's per-payment maximum",
        "the price is above the wallet's on-chain cap: look for a cheaper resource",
    )
    ONCHAIN_WINDOW = (
        "onchain_window",
        Layer.WALLET,
        "the payment's validity window is longer than the account allows",
        "the server's timeout is longer than the wallet allows: skip the resource",
    )
    ONCHAIN_PAYEE = (
        "onchain_payee",
        Layer.WALLET,
        "the smart account does not pay this payee",
        "the wallet's on-chain limits refuse this payee: tell the user",
    )
    SESSION_KEY_EXPIRED = (
        "session_key_expired",
        Layer.WALLET,
        "the smart account's session key has expired",
        "the wallet's session key expired: the user must renew it",
    )
    HOT_WALLET_EXHAUSTED = (
        "hot_wallet_exhausted",
        Layer.WALLET,
        "the account and its vault cannot cover this payment",
        "the wallet cannot cover this payment now: tell the user",
    )
    NOT_A_SMART_ACCOUNT = (
        "not_a_smart_account",
        Layer.WALLET,
        "the configured account has no smart-account code",
        "the wallet is not set up: the user must run `x402-agent wallet`",
    )
    RELAYER_MISSING = (
        "relayer_missing",
        Layer.WALLET,
        "no relayer key for on-chain set-up",
        "the user must give a funded relayer key",
    )
    BUNDLER_UNAVAILABLE = (
        "bundler_unavailable",
        Layer.WALLET,
        "the ERC-4337 bundler cannot be reached",
        "the bundler is down: retry later",
    )
    BUNDLER_REJECTED = (
        "bundler_rejected",
        Layer.WALLET,
        "the bundler refused the user operation",
        "tell the user: the wallet's operation was refused",
    )
    # A bundler's refusals by their ERC-7769 code (chain/bundler_errors.py).
    BUNDLER_VALIDATION_REVERTED = (
        "bundler_validation_reverted",
        Layer.WALLET,
        "the bundler's simulation of the account's validation failed",
        "the wallet's top-up was refused in validation (the message names the EntryPoint's AA "
        "code): tell the user; nothing was paid",
    )
    BUNDLER_PAYMASTER_REJECTED = (
        "bundler_paymaster_rejected",
        Layer.WALLET,
        "the bundler refused the operation's paymaster",
        "tell the user: the wallet's operations use no paymaster, so the bundler or the "
        "operation is not what it should be; nothing was paid",
    )
    BUNDLER_RULES_VIOLATED = (
        "bundler_rules_violated",
        Layer.WALLET,
        "the operation breaks the ERC-7562 validation rules the bundler enforces",
        "tell the user: this bundler refuses the account's validation (banned opcode or storage "
        "access); use another bundler or the relayer key; nothing was paid",
    )
    BUNDLER_TIME_RANGE = (
        "bundler_time_range",
        Layer.WALLET,
        "the operation is expired or expires too soon for the bundler",
        "the wallet's session key expires too soon for the bundler: the user renews it; nothing was paid",
    )
    BUNDLER_THROTTLED = (
        "bundler_throttled",
        Layer.WALLET,
        "the bundler throttled or banned the account, factory or paymaster",
        "the bundler is throttling the wallet: retry later, or use another bundler or the "
        "relayer key; nothing was paid",
    )
    BUNDLER_STAKE_TOO_LOW = (
        "bundler_stake_too_low",
        Layer.WALLET,
        "the bundler wants a stake (or a longer unstake delay) from an entity of the operation",
        "tell the user: this bundler wants the account or its factory staked; use another "
        "bundler or the relayer key; nothing was paid",
    )
    BUNDLER_AGGREGATOR = (
        "bundler_aggregator",
        Layer.WALLET,
        "the bundler does not support the operation's signature aggregator",
        "tell the user: the bundler refused the aggregator; nothing was paid",
    )
    BUNDLER_SIGNATURE_INVALID = (
        "bundler_signature_invalid",
        Layer.WALLET,
        "the bundler found the operation's signature invalid",
        "the session key may be revoked or a gas field above the account's caps: tell the user; "
        "nothing was paid",
    )
    BUNDLER_INVALID_FIELDS = (
        "bundler_invalid_fields",
        Layer.WALLET,
        "the bundler refused a field of the operation (often a gas price below its minimum)",
        "the bundler wants other gas fields (its message says which): retry later, or use "
        "another bundler; nothing was paid",
    )
    USER_OP_REJECTED = (
        "user_op_rejected",
        Layer.WALLET,
        "the EntryPoint refused the user operation",
        "tell the user: the wallet's operation was refused",
    )
    USER_OP_PENDING = (
        "user_op_pending",
        Layer.WALLET,
        "the user operation was not included in time",
        "the wallet's operation is still pending: retry later",
    )
    USER_OP_FAILED = (
        "user_op_failed",
        Layer.WALLET,
        "the user operation reverted",
        "tell the user: the wallet's operation failed on chain",
    )
    RELAYER_UNFUNDED = (
        "relayer_unfunded",
        Layer.WALLET,
        "the relayer key holds too little ETH to send handleOps",
        "the wallet cannot send its top-up: the user sends the relayer key ETH for gas; nothing was paid",
    )
    USER_OP_UNSENT = (
        "user_op_unsent",
        Layer.WALLET,
        "no bundler took the user operation and the relayer key could not send it",
        "the wallet cannot top up now, nothing was paid or counted: the user checks the bundler "
        "URL (and its API key variable) and sends the relayer key ETH for gas, then retry",
    )
    GAS_DEPOSIT_LOW = (
        "gas_deposit_low",
        Layer.WALLET,
        "the account's EntryPoint deposit cannot pay for the session key's top-up operation",
        "the wallet cannot pay gas for a top-up now: the user sends the account ETH and gives the "
        "home a relayer key, which has the account move it into its gas deposit (within the "
        "account's ETH allowance per period)",
    )
    GAS_FEE_ABOVE_CAP = (
        "gas_fee_above_cap",
        Layer.WALLET,
        "network fees are above the account's cap for session-key operations",
        "gas is too expensive for the wallet's caps now: retry later, or the user raises the "
        "caps on the device (setGasCaps)",
    )
    GAS_ESTIMATE_ABOVE_CAP = (
        "gas_estimate_above_cap",
        Layer.WALLET,
        "the bundler estimates the top-up operation above the account's gas caps",
        "the wallet's top-up needs more gas than its caps allow (the details name the field): "
        "the user raises that cap on the device (setGasCaps) or uses another bundler; nothing was "
        "paid",
    )
    FACTORY_MISSING = (
        "factory_missing",
        Layer.WALLET,
        "the project's account factory is not deployed on this chain",
        "the user runs `x402-agent wallet deploy-factory --network ...` once for this chain "
        "(a key with ETH pays its ~11M gas), then retries",
    )
    FACTORY_BYTECODE_MISMATCH = (
        "factory_bytecode_mismatch",
        Layer.WALLET,
        "another contract sits at the account factory's address (or one it depends on)",
        "do not use a smart account on this chain: the user checks the RPC URL names the "
        "intended chain and reports the address",
    )
    CREATE2_DEPLOYER_MISSING = (
        "create2_deployer_missing",
        Layer.WALLET,
        "the chain has no deterministic deployment proxy at its standard address",
        "the factory cannot get its usual address on this chain: the user has the proxy "
        "deployed there (its pre-signed transaction) or pays with a plain key",
    )
    DEPLOYER_UNFUNDED = (
        "deployer_unfunded",
        Layer.WALLET,
        "the key deploying the factory holds too little ETH for the gas",
        "nothing was sent: the user sends the named address the ETH it needs, then retries",
    )
    SESSION_KEY_IN_USE = (
        "session_key_in_use",
        Layer.WALLET,
        "the session key named for revocation is the one this home pays with (or rotates to)",
        "revoking it stops this home's payments: the user adds --current if that is meant, or "
        "names the old key's address",
    )
    SESSION_EXPIRY_OUT_OF_RANGE = (
        "session_expiry_out_of_range",
        Layer.WALLET,
        "a session-key expiry beyond 2^48-1 (user-operation validation packs it in 48 bits)",
        "the user must choose a shorter session (--session-days)",
    )
    OWNER_ACTION_FAILED = (
        "owner_action_failed",
        Layer.WALLET,
        "an owner action did not land on chain (relayer without ETH, RPC down, or refused)",
        "nothing changed on chain: the user funds the relayer key with ETH (or fixes the RPC), "
        "then runs the same command again; an interrupted rotation continues where it stopped",
    )
    OWNER_ACTION_TOO_LONG = (
        "owner_action_too_long",
        Layer.WALLET,
        "the owner action's text is longer than a hardware wallet signs (1023 bytes)",
        "nothing was signed: split the action (an execute with shorter calldata, or several actions)",
    )
    ROTATION_INCONSISTENT = (
        "rotation_inconsistent",
        Layer.SETUP,
        "the home's pending session-key rotation does not match its keys",
        "the user must restore the home's session keystores (session.keystore.json, "
        "session.next.keystore.json) from a backup",
    )

    # ---- hardware wallet ----------------------------------------------------------------------
    DEVICE_ERROR = (
        "device_error",
        Layer.DEVICE,
        "the hardware wallet failed",
        "the user must check the hardware wallet",
    )
    DEVICE_REJECTED = (
        "device_rejected",
        Layer.DEVICE,
        "rejected on the hardware wallet",
        "the user said no on the device: do not retry unless they ask",
    )
    DEVICE_UNAVAILABLE = (
        "device_unavailable",
        Layer.DEVICE,
        "the hardware wallet is not reachable",
        "the user must connect and unlock the hardware wallet",
    )
    DEVICE_NOT_FOUND = (
        "device_not_found",
        Layer.DEVICE,
        "no hardware wallet found",
        "the user must connect the hardware wallet",
    )
    DEVICE_AMBIGUOUS = (
        "device_ambiguous",
        Layer.DEVICE,
        "more than one hardware wallet found",
        "the user must name the device (--device) or unplug the others",
    )
    DEVICE_TIMEOUT = (
        "device_timeout",
        Layer.DEVICE,
        "the hardware wallet did not answer in time",
        "the user must confirm on the device sooner, then retry",
    )

    # ---- agent home and policy files ----------------------------------------------------------
    CONFIG_INVALID = (
        "config_invalid",
        Layer.SETUP,
        "the agent's configuration is unusable",
        "the user must fix the agent home's configuration",
    )
    KEY_IN_CLEAR = (
        "key_in_clear",
        Layer.SETUP,
        "a service URL holds its API key in clear, which the home never stores",
        "export the key as X402_AGENT_BUNDLER_KEY and write the URL with that variable's "
        "placeholder where the key was (the message shows it); nothing was written",
    )
    KEY_ENV_MISSING = (
        "key_env_missing",
        Layer.SETUP,
        "the bundler URL names an environment variable that is not set",
        "export the variable the message names with the provider's API key, then retry; nothing was paid",
    )
    HOME_MISSING = (
        "home_missing",
        Layer.SETUP,
        "there is no agent home",
        "the user must run `x402-agent init` (or `x402-agent devnet`)",
    )
    FACILITATOR_URL_MISSING = (
        "facilitator_url_missing",
        Layer.SETUP,
        "no facilitator to ask for a discovery listing",
        "give facilitator_url (the facilitator whose Bazaar listing to read), or the user sets "
        "facilitator_url in the agent home's config.json",
    )
    HOME_EXISTS = (
        "home_exists",
        Layer.SETUP,
        "the agent home already exists",
        "use the existing home or choose another directory",
    )
    KEYSTORE_UNREADABLE = (
        "keystore_unreadable",
        Layer.SETUP,
        "the keystore cannot be read",
        "the user must restore the agent's keystore",
    )
    KEYSTORE_LOCKED = (
        "keystore_locked",
        Layer.SETUP,
        "the keystore password is wrong",
        "the user must give the right keystore password",
    )
    KEYSTORE_PASSWORD_MISSING = (
        "keystore_password_missing",
        Layer.SETUP,
        "no keystore password was given",
        "the user must set the keystore password variable",
    )
    POLICY_MISSING = (
        "policy_missing",
        Layer.SETUP,
        "there is no policy file",
        "the user must write and approve a policy (`x402-agent policy`)",
    )
    POLICY_INVALID = (
        "policy_invalid",
        Layer.SETUP,
        "the policy file is invalid",
        "the user must fix the policy file",
    )
    POLICY_NOT_APPROVED = (
        "policy_not_approved",
        Layer.SETUP,
        "the policy is not approved on the device",
        "the user must approve the policy on the hardware wallet",
    )
    POLICY_UNSIGNED = (
        "policy_unsigned",
        Layer.SETUP,
        "the policy has no device approval",
        "the user must approve the policy on the hardware wallet",
    )
    POLICY_TAMPERED = (
        "policy_tampered",
        Layer.SETUP,
        "the policy differs from what the device approved",
        "nothing is paid: the user must re-approve the policy on the device",
    )
    POLICY_WRONG_KEY = (
        "policy_wrong_key",
        Layer.SETUP,
        "the policy was approved by another device key",
        "the user must approve the policy with the enrolled device",
    )
    POLICY_WRONG_ACCOUNT = (
        "policy_wrong_account",
        Layer.SETUP,
        "the policy is for another account or chain",
        "the user must approve a policy for this account and chain",
    )
    POLICY_ROLLED_BACK = (
        "policy_rolled_back",
        Layer.SETUP,
        "the policy is older than one already in force",
        "nothing is paid: the user must approve a newer policy",
    )
    ENROLLMENT_NOT_OWNER = (
        "enrollment_not_owner",
        Layer.SETUP,
        "the enrolled device key is not the smart account's owner",
        "the home's device file was replaced or names another device: re-enroll the device "
        "that owns the account (`x402-agent device enroll`) and approve the policy on it; the "
        "owner is set on chain when the account is created, never by a file in the home",
    )
    DEVICE_NOT_ENROLLED = (
        "device_not_enrolled",
        Layer.SETUP,
        "no hardware wallet is enrolled in this agent home",
        "the user must enroll the device (`x402-agent device enroll`)",
    )
    POLICY_NEEDS_DEVICE = (
        "policy_needs_device",
        Layer.SETUP,
        "a looser policy needs the device's approval",
        "the user must approve the change on the hardware wallet",
    )
    POLICY_TEXT_TOO_LONG = (
        "policy_text_too_long",
        Layer.SETUP,
        "the policy's approval text is longer than a device signs",
        "shorten the policy's lists (hosts, payees, private network entries) or merge entries "
        "(*.domain patterns), then propose it again",
    )
    POLICY_SUPERSEDED_ON_CHAIN = (
        "policy_superseded_on_chain",
        Layer.SETUP,
        "the smart account anchors a newer policy than the home's files",
        "nothing is paid: the home's policy files were restored or are out of date; approve "
        "the current policy on the device again (`x402-agent policy propose` then `policy "
        "approve`), the chain keeps the newest anchored version",
    )
    POLICY_NOT_ANCHORED = (
        "policy_not_anchored",
        Layer.SETUP,
        "the policy is not the one the smart account anchors on chain",
        "nothing is paid: approve the policy on the device with `x402-agent policy approve`, "
        "which anchors its digest on the account; `x402-agent policy show` prints both",
    )
    NO_PROPOSAL = (
        "no_proposal",
        Layer.SETUP,
        "there is no policy proposal to approve",
        "propose a policy first (`x402-agent policy propose`)",
    )


_BY_CODE: dict[str, Reason] = {r.value: r for r in Reason}


def _limits() -> dict[str, Any]:
    from . import deadline
    from . import request_limits as limits

    return {
        "MIN_TIMEOUT_SECONDS": deadline.MIN_TIMEOUT_SECONDS,
        "MAX_TIMEOUT_SECONDS": deadline.MAX_TIMEOUT_SECONDS,
        "MAX_URL_CHARS": limits.MAX_URL_CHARS,
        "MAX_HEADERS": limits.MAX_HEADERS,
        "MAX_HEADER_VALUE_CHARS": limits.MAX_HEADER_VALUE_CHARS,
        "MAX_HEADERS_TOTAL_CHARS": limits.MAX_HEADERS_TOTAL_CHARS,
        "MAX_BODY_BYTES": limits.MAX_BODY_BYTES,
        "MAX_KEY_CHARS": limits.MAX_KEY_CHARS,
        "ALLOWED_METHODS": ", ".join(sorted(limits.ALLOWED_METHODS)),
    }


# Outcomes that are not refusals: left out of the refusal lists.
NOT_REFUSALS = frozenset({Reason.ALLOWED, Reason.FREE})


def refusal_codes() -> str:
    """The refusal codes by layer, one line each (the tool descriptions' list)."""
    lines = []
    for layer in Layer:
        codes = [r.value for r in Reason if r.layer is layer and r not in NOT_REFUSALS]
        lines.append(f"- {layer}: {', '.join(codes)}")
    return "\n".join(lines)


def markdown() -> str:
    """docs/reasons.md: every code with its meaning and next step."""
    out = [
        "# Outcome codes",
        "",
        "Generated from `x402_agent/reasons.py` (`python -m x402_agent.reasons > "
        "docs/reasons.md`); a test keeps it current. Every refusal (MCP, LangChain, CLI "
        "`--json`, Python errors) carries one of these `reason` codes and its `next_step`.",
        "",
    ]
    for layer in Layer:
        out += [f"## {layer[0].upper()}{layer[1:]}", "", "| code | meaning | next step |", "|---|---|---|"]
        out += [
            f"| `{r.value}` | {r.message} | {r.next_step.replace('|', '/')} |"
            for r in Reason
            if r.layer is layer
        ]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
