"""One error tree for the whole package.

Every error carries a machine-readable ``reason`` (a ``reasons.Reason``: a stable snake_case
code with its next step) that agents, the MCP and LangChain adapters and the CLI can act on, a
human message, and ``details`` that are safe to show (never keys, seeds or passwords).
"""

from __future__ import annotations

from typing import Any

from .reasons import Reason


class X402AgentError(Exception):
    """Base of every error this package raises on purpose."""

    reason: Reason = Reason.X402_AGENT_ERROR

    def __init__(self, message: str, *, reason: Reason | None = None, **details: Any) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "message": self.message,
            "next_step": self.reason.next_step,
            "error": type(self).__name__,
            **({"details": self.details} if self.details else {}),
        }


class ConfigError(X402AgentError):
    """The agent home, its configuration or its key store is missing or unusable."""

    reason = Reason.CONFIG_INVALID


class InvalidRequest(X402AgentError):
    """The caller asked for something we refuse before touching the network."""

    reason = Reason.INVALID_REQUEST


class ChallengeError(X402AgentError):
    """The server's 402 challenge cannot be trusted or understood; nothing was signed."""

    reason = Reason.MALFORMED_CHALLENGE


class NoAcceptableRequirement(X402AgentError):
    """Every payment option in the challenge was refused; ``details['rejected']`` says why."""

    reason = Reason.NO_ACCEPTABLE_REQUIREMENT


class PolicyDenied(X402AgentError):
    """The spending policy refused the payment."""

    reason = Reason.POLICY_DENIED


class PrivateAddressRefused(PolicyDenied):
    """The request would reach a loopback, private, link-local, metadata or other non-public
    address the policy does not opt in; refused before any connection is opened.

    ``details``: rule (loopback, private, link_local, unique_local, unspecified, multicast,
    metadata, reserved), host, port, address, policy_field (where an opt-in goes).
    """

    reason = Reason.PRIVATE_ADDRESS


class RedirectRefused(X402AgentError):
    """A redirect would have taken the request (and a payment) to another origin."""

    reason = Reason.CROSS_ORIGIN_REDIRECT


class PaymentMismatch(X402AgentError):
    """What would be signed or sent differs from the requirement that was chosen."""

    reason = Reason.PAYMENT_MISMATCH


class IdempotencyConflict(X402AgentError):
    """An idempotency key was reused for a different request."""

    reason = Reason.IDEMPOTENCY_KEY_CONFLICT


class PaymentInFlight(X402AgentError):
    """Another attempt with the same idempotency key is still in progress."""

    reason = Reason.PAYMENT_IN_FLIGHT


class PaidNotDelivered(X402AgentError):
    """We sent a payment but did not get the resource; the amount stays counted.

    ``details`` holds the payment id and the evidence (status, settlement header, tx).
    """

    reason = Reason.PAID_NOT_DELIVERED


class PaymentNotSettled(X402AgentError):
    """The server answered the paid request without delivering, and nothing shows money moved:
    no settlement header, and the chain has not used the authorization. It stays counted until
    it expires (``details['expires_at']``) unless the chain shows it settled.

    ``details``: payment_id, status, state, expires_at (Unix time), expires_at_iso.
    """

    reason = Reason.PAYMENT_NOT_SETTLED


class PaymentRejected(PaymentNotSettled):
    """The server answered the paid request with 402: it refused the payment (``details``
    ``server_reason`` says why, as the server stated it). Nothing settled yet."""

    reason = Reason.PAYMENT_REJECTED


class PaymentIdentifierConflict(PaymentNotSettled):
    """The server declared the payment-identifier extension and answered 409: the identifier
    this payment carried was used with another payload. It took nothing from this payment;
    nothing is signed again.

    ``details``: as PaymentNotSettled, plus payment_identifier.
    """

    reason = Reason.PAYMENT_IDENTIFIER_CONFLICT


class SettlementMismatch(X402AgentError):
    """The server's settlement does not match what we signed, or the chain disagrees."""

    reason = Reason.SETTLEMENT_MISMATCH


class LedgerError(X402AgentError):
    """The ledger could not record a state change; no payment proceeds without it."""

    reason = Reason.LEDGER_ERROR


class UpstreamError(X402AgentError):
    """The server could not be reached or answered something unusable at the HTTP level."""

    reason = Reason.UPSTREAM_UNREACHABLE


class DeadlineExceeded(UpstreamError):
    """The fetch's overall deadline passed before the server finished answering.

    ``details``: host, deadline_seconds, status (when the headers came), received_bytes.
    """

    reason = Reason.DEADLINE_EXCEEDED


class ChainError(X402AgentError):
    """The chain RPC failed or answered something unusable."""

    reason = Reason.CHAIN_UNAVAILABLE


class FactoryError(X402AgentError):
    """The account factory cannot be used on this chain: missing, or another contract sits at its
    address; ``details`` name the address. Nothing was sent."""

    reason = Reason.FACTORY_MISSING
