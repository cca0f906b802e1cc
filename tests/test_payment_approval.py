"""A payment above the policy's approval threshold is confirmed on the enrolled hardware device,
never by text on the agent's standard input (issue 12, item 5).

The agent here is a process driving the CLI under a pseudo-terminal (``script -qc``) and typing
"y" into it; the person is a script that reads the device simulator's screen and presses its
buttons (``approve()`` / ``reject()``). HWI's own debug-link "yes" is ignored
(``honor_debuglink=False``), as on a real device, whose buttons only a person can press.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from chain_reads import token_balance
from test_device_policy import screens  # noqa: F401 (the fixture)

from x402_agent.approval import Enrollment
from x402_agent.device.hwi import HwiDevice
from x402_agent.device.payment import DeviceApprover
from x402_agent.device.simulator import DeviceSimulator, Screen
from x402_agent.devnet.info import RouteInfo, WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.errors import PolicyDenied
from x402_agent.flow import ApprovalRequest
from x402_agent.home import open_home
from x402_agent.payment_approval import check_payment_signature, payment_message
from x402_agent.policy import Policy
from x402_agent.policy_store import DEVICE_FILE, PolicyStore, expectations

THRESHOLD = 5_000  # 0.005 USDC: the 0.01 report needs a human
OTHER_PATH = "m/44'/1'/402'/0/1"  # a key of the same device, but not the enrolled one
SCREEN_WAIT = 60.0


@pytest.fixture
def person(device_simulator: DeviceSimulator, screens: list[Screen]) -> list[Screen]:  # noqa: F811
    """The simulator waits for a person (the test) to press a button; HWI's debug-link "yes"
    counts for nothing. The screens shown; ``screens`` puts the simulator back afterwards.
    Tests name it after ``home``, whose provisioning needs the simulator still approving."""
    device_simulator.confirm, device_simulator.honor_debuglink = "wait", False
    return screens


@pytest.fixture
def home(world: WorldInfo, device_simulator: DeviceSimulator, tmp_path: Path) -> Path:
    """A devnet home (the simulator enrolled, its path recorded) whose device-approved policy
    asks a human above 0.005 USDC. Provisioned while the simulator still approves by itself."""
    data = devnet_policy(world).model_dump(by_alias=True)
    for asset in data["assets"]:
        asset["approval_above"] = THRESHOLD
    return provision_devnet_home(world, tmp_path / "home", Policy.model_validate(data)).root


@pytest.fixture
def report(world: WorldInfo) -> RouteInfo:
    route = world.route("GET", "/v2/report")  # 0.01 USDC, above the threshold
    assert route.pay_to is not None and route.asset is not None
    return route


class AgentAtTerminal:
    """``x402-agent fetch URL --json`` run by an agent under a pseudo-terminal (``script``),
    the agent typing "y" into it from the start."""

    def __init__(self, home: Path, url: str) -> None:
        command = shlex.join([sys.executable, "-m", "x402_agent.cli", "fetch", url, "--json"])
        self.proc = subprocess.Popen(
            ["script", "-eqc", command, "/dev/null"],
            env={**os.environ, "X402_AGENT_HOME": str(home)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.type("y\n")

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, str, dict[str, object]]:
        """Exit code, everything the terminal showed, and the --json answer (the terminal
        carries stderr and stdout alike: the answer is the last JSON document)."""
        out, _ = self.proc.communicate(timeout=120)  # closes stdin once the CLI is done
        text = out.decode().replace("\r\n", "\n")
        answer = json.loads(text[text.rindex("\n{") if "\n{" in text else text.index("{") :])
        return self.proc.returncode, text, answer


def paid_receipts(home: Path) -> list[object]:
    done = subprocess.run(
        [sys.executable, "-m", "x402_agent.cli", "receipts", "--format", "json"],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    receipts = json.loads(done.stdout)
    assert isinstance(receipts, list)
    return receipts


def read_screen(device_simulator: DeviceSimulator, route: RouteInfo, world: WorldInfo) -> str:
    """What the person reads before pressing anything: amount, payee, network and host."""
    screen = device_simulator.wait_for_screen(timeout=SCREEN_WAIT)
    assert screen is not None, "the device was never asked"
    assert screen.kind == "sign_message"
    message = screen.field("Message")
    assert message is not None
    host = route.url.split("://", 1)[1].split("/", 1)[0]
    assert message.startswith(
        f"x402-agent pay 0.01 USDC to {route.pay_to} on {world.network} for GET {host}/v2/report, payment "
    )
    assert message.endswith(", policy v1")
    return message


def test_typing_y_under_a_pseudo_terminal_approves_nothing_and_the_person_rejects(
    world: WorldInfo, home: Path, report: RouteInfo, device_simulator: DeviceSimulator, person: list[Screen]
) -> None:
    assert report.asset is not None and report.pay_to is not None
    before = token_balance(world.rpc_url, report.asset, report.pay_to)
    agent = AgentAtTerminal(home, report.url)  # "y" is already typed
    message = read_screen(device_simulator, report, world)  # still waiting for a button
    agent.type("y\nyes\n")  # the agent insists: the terminal is not where approvals come from
    assert device_simulator.pending_screen is not None
    assert device_simulator.reject()  # the person did not ask for this payment

    code, terminal, answer = agent.finish()
    assert code == 1 and answer["reason"] == "approval_denied", terminal
    assert f"confirm on the device: {message}" in terminal  # told where to look, no y/N prompt
    assert "[y/N]" not in terminal
    assert [s.field("Message") for s in person] == [message]  # asked once, on the device
    assert token_balance(world.rpc_url, report.asset, report.pay_to) == before
    assert paid_receipts(home) == []


def test_the_person_confirms_on_the_device_and_it_pays_once(
    world: WorldInfo, home: Path, report: RouteInfo, device_simulator: DeviceSimulator, person: list[Screen]
) -> None:
    assert report.asset is not None and report.pay_to is not None
    before = token_balance(world.rpc_url, report.asset, report.pay_to)
    agent = AgentAtTerminal(home, report.url)
    read_screen(device_simulator, report, world)
    assert device_simulator.approve()  # the person read amount, payee and host: yes

    code, terminal, answer = agent.finish()
    assert code == 0, terminal
    receipt = answer["receipt"]
    assert isinstance(receipt, dict) and receipt["amount"] == "10000"
    assert token_balance(world.rpc_url, report.asset, report.pay_to) == before + 10_000
    assert len(paid_receipts(home)) == 1
    assert len(person) == 1  # one screen, one payment


def test_no_device_reachable_means_approval_required_and_nothing_paid(
    world: WorldInfo, home: Path, report: RouteInfo, device_simulator: DeviceSimulator, person: list[Screen]
) -> None:
    assert report.asset is not None and report.pay_to is not None
    before = token_balance(world.rpc_url, report.asset, report.pay_to)
    device_simulator.unplug()
    code, terminal, answer = AgentAtTerminal(home, report.url).finish()
    assert code == 1 and answer["reason"] == "approval_required", terminal
    assert "hardware device" in str(answer["message"])
    assert "enrolled hardware device" in str(answer["next_step"])
    assert person == []
    assert token_balance(world.rpc_url, report.asset, report.pay_to) == before
    assert paid_receipts(home) == []


def _request(world: WorldInfo, route: RouteInfo) -> ApprovalRequest:
    assert route.pay_to is not None
    return ApprovalRequest(
        method="GET",
        url=route.url + "?api_key=s3cret",
        amount=10_000,
        symbol="USDC",
        decimals=6,
        network=world.network,
        pay_to=route.pay_to,
        policy_version=1,
    )


def test_nobody_at_the_device_is_approval_required(
    world: WorldInfo, home: Path, report: RouteInfo, device_simulator: DeviceSimulator, person: list[Screen]
) -> None:
    opened = open_home(home)
    assert opened.config.device is not None
    approver = DeviceApprover(
        PolicyStore(home, expectations(opened)),
        [(opened.config.device.type, opened.config.device.path)],
        timeout=1.0,
    )
    with pytest.raises(PolicyDenied) as unanswered:
        approver(_request(world, report))
    assert unanswered.value.reason == "approval_required"
    assert "within 1s" in unanswered.value.message
    shown = device_simulator.pending_screen
    assert shown is not None and "s3cret" not in (shown.field("Message") or "")  # no query
    assert device_simulator.reject()


def test_only_the_enrolled_key_approves_a_payment(
    world: WorldInfo, home: Path, report: RouteInfo, device_simulator: DeviceSimulator
) -> None:
    enrollment = Enrollment.model_validate_json((home / DEVICE_FILE).read_bytes())
    message = payment_message(_request(world, report), "00112233aabb")
    device = HwiDevice.at("trezor", device_simulator.path)  # auto-approving here
    try:
        good = device.sign_message(message, enrollment.path)
        other = device.sign_message(message, OTHER_PATH)  # same device, same fingerprint
    finally:
        device.close()
    check_payment_signature(message, good, enrollment)
    for signature, text in ((other, message), (good, message.replace("0.01 USDC", "0.10 USDC"))):
        with pytest.raises(PolicyDenied) as refused:
            check_payment_signature(text, signature, enrollment)
        assert refused.value.reason == "approval_unverified"


def test_the_line_fits_a_signed_message_and_keeps_amount_payee_and_host() -> None:
    payee = "0x" + "ab" * 20
    request = ApprovalRequest(
        method="POST",
        url="https://api.example.com:8443/" + "p" * 400,
        amount=1_234_567,
        symbol="USDC",
        decimals=6,
        network="eip155:84532",
        pay_to=payee,
        policy_version=12,
    )
    message = payment_message(request, "0123456789ab")
    assert len(message.encode()) <= 252
    assert message.startswith(
        f"x402-agent pay 1.234567 USDC to {payee} on eip155:84532 for POST api.example.com:8443/ppp"
    )
    assert message.endswith("..., payment 0123456789ab, policy v12")
    with pytest.raises(PolicyDenied) as too_long:
        payment_message(
            ApprovalRequest(
                method="GET",
                url=f"https://{'h' * 200}.example/",
                amount=1,
                symbol="USDC",
                decimals=6,
                network="eip155:84532",
                pay_to=payee,
                policy_version=1,
            ),
            "0123456789ab",
        )
    assert too_long.value.reason == "approval_required"
