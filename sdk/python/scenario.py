"""A creator and a payer, through the Python client generated from
openapi/openapi.json (openapi-python-client), against a live tally server and
the fake Stripe. Run by scripts/sdk.sh, which starts both and passes:

  TALLY_URL, FAKE_STRIPE_URL, ADMIN_TOKEN, CREATOR_TOKEN, PAYER_TOKEN

The server runs with a 1 s earnings hold, a 200 ms settlement sweep and a
10-credit minimum withdrawal; credits are worth $0.10 and the marketplace
share is 30 %. Every amount below is exact.
"""

import json
import os
import sys
import time
import urllib.request

from tally_client import AuthenticatedClient
from tally_client.api.admin import put_model, create_plan_grant, settle_top_up, verify_ledger
from tally_client.api.agents import create_agent
from tally_client.api.charges import create_charge, get_quote
from tally_client.api.earnings import get_earnings
from tally_client.api.organizations import create_org
from tally_client.api.payouts import connect_payout_account, create_payout, get_payout_account
from tally_client.api.people import get_me
from tally_client.api.top_ups import create_top_up
from tally_client.api.wallets import get_wallet, list_wallet_transactions
from tally_client.models import (
    AgentVisibility,
    CreateAgentRequest,
    CreateOrgRequest,
    CreatePayoutRequest,
    CreatePlanGrantRequest,
    CreateTopUpRequest,
    ErrorResponse,
    PutModelRequest,
    TopUpMethod,
)

URL = os.environ["TALLY_URL"]
STRIPE = os.environ["FAKE_STRIPE_URL"]


def client(token_var: str) -> AuthenticatedClient:
    return AuthenticatedClient(base_url=URL, token=os.environ[token_var], raise_on_unexpected_status=True)


admin, creator, payer = client("ADMIN_TOKEN"), client("CREATOR_TOKEN"), client("PAYER_TOKEN")


def expect(response, status: int):
    """The parsed body of a response that must have this status."""
    if response.status_code != status:
        sys.exit(f"expected {status}, got {response.status_code}: {response.content.decode()}")
    if isinstance(response.parsed, ErrorResponse):
        sys.exit(f"unexpected error body: {response.content.decode()}")
    return response.parsed


def check(what: str, got, want) -> None:
    if got != want:
        sys.exit(f"{what}: expected {want!r}, got {got!r}")
    print(f"ok  {what} = {got!r}")


def wait_for(what: str, probe, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


# The price book and a Pro creator organization with a public agent.
model = expect(
    put_model.sync_detailed("sdk-model", client=admin, body=PutModelRequest(runtime_infra="0.3", provider_cost="0.0021")),
    200,
)
check("model runtime_infra", model.runtime_infra, "0.3")
org = expect(create_org.sync_detailed(client=creator, body=CreateOrgRequest(name="Acme Agents")), 201)
check("creator's role", org.role, "owner")
expect(create_plan_grant.sync_detailed(client=admin, body=CreatePlanGrantRequest(plan="pro", org_id=org.id)), 201)
agent = expect(
    create_agent.sync_detailed(
        org.id,
        client=creator,
        body=CreateAgentRequest(
            name="Research helper", model="sdk-model", visibility=AgentVisibility.PUBLIC, publisher_addon="10"
        ),
    ),
    201,
)
check("agent cost per message", agent.estimated_cost_per_message, "10.3")

# The payer buys 150 credits by invoice; an operator settles the order.
me = expect(get_me.sync_detailed(client=payer), 200)
wallet_id = me.wallet_id
order = expect(
    create_top_up.sync_detailed(
        wallet_id,
        client=payer,
        body=CreateTopUpRequest(pack_id="standard", method=TopUpMethod.MANUAL),
        idempotency_key="py-top-up-1",
    ),
    201,
)
check("order", (order.status, order.credits_, order.amount_usd, order.checkout_url), ("pending", "150", "15.00", None))
check("balance before settlement", expect(get_wallet.sync_detailed(wallet_id, client=payer), 200).balance, "0")
paid = expect(settle_top_up.sync_detailed(order.id, client=admin, idempotency_key="py-settle-1"), 200)
check("settled order", (paid.status, paid.receipt_number), ("paid", 1))
check("balance after settlement", expect(get_wallet.sync_detailed(wallet_id, client=payer), 200).balance, "150")

# Quote, then two messages (the first one sent twice with the same key).
quote = expect(get_quote.sync_detailed(agent.id, client=payer), 200)
check(
    "quote",
    (quote.runtime_infra, quote.publisher_addon, quote.total, quote.balance, quote.sufficient, quote.free),
    ("0.3", "10", "10.3", "150", True, False),
)
first = expect(create_charge.sync_detailed(agent.id, client=payer, idempotency_key="py-msg-1"), 201)
check("first charge", (first.total, first.balance_after, first.free), ("10.3", "139.7", False))
again = create_charge.sync_detailed(agent.id, client=payer, idempotency_key="py-msg-1")
check("retry replays the same charge", (expect(again, 201).id, again.headers.get("Idempotent-Replayed")), (first.id, "true"))
second = expect(create_charge.sync_detailed(agent.id, client=payer, idempotency_key="py-msg-2"), 201)
check("second charge", (second.total, second.balance_after), ("10.3", "129.4"))

# The wallet's history, newest first.
history = expect(list_wallet_transactions.sync_detailed(wallet_id, client=payer), 200)
check(
    "history",
    [(t.type_, t.amount, t.balance_after) for t in history.data],
    [("charge", "-10.3", "129.4"), ("charge", "-10.3", "139.7"), ("top_up", "150", "150")],
)
check("history has_more", history.has_more, False)
check("charge's transaction", history.data[0].id, second.transaction_id)

# The creator earns 70 % of the add-ons: 2 x 7 = 14 credits, available after the hold.
earnings = wait_for(
    "earnings to settle",
    lambda: (e := expect(get_earnings.sync_detailed(org.id, client=creator), 200)).available == "14" and e,
)
check(
    "earnings",
    (earnings.lifetime_gross, earnings.platform_share, earnings.pending, earnings.available),
    ("20", "6", "0", "14"),
)

# Connect a payout account; the fake Stripe finishes onboarding by webhook.
account = expect(connect_payout_account.sync_detailed(org.id, client=creator), 200)
check("onboarding link", account.onboarding_url.startswith("https://connect.stripe.test/setup/"), True)
wait_for(
    "payouts to be enabled",
    lambda: expect(get_payout_account.sync_detailed(org.id, client=creator), 200).payouts_enabled,
)

# All available earnings: 14 credits = $1.40, sent as one Stripe transfer.
payout = expect(
    create_payout.sync_detailed(org.id, client=creator, body=CreatePayoutRequest(), idempotency_key="py-payout-1"),
    201,
)
check("payout", (payout.status, payout.amount, payout.usd), ("in_transit", "14", "1.40"))
earnings = expect(get_earnings.sync_detailed(org.id, client=creator), 200)
check("earnings after payout", (earnings.available, earnings.in_payout), ("0", "14"))
with urllib.request.urlopen(f"{STRIPE}/_fake/requests") as r:
    transfers = [x for x in json.load(r) if x["path"] == "/v1/transfers"]
check(
    "transfers at Stripe",
    [(t["form"]["amount"], t["form"]["currency"], t["form"]["destination"], t["idempotency_key"]) for t in transfers],
    [("140", "usd", account.account_id, payout.id)],
)
check("transfer id", payout.transfer_id.startswith("tr_"), True)

# The ledger holds together.
report = expect(verify_ledger.sync_detailed(client=admin), 200)
check("ledger verify", (report.ok, report.ledger_sum, len(report.breaches)), (True, "0", 0))
print("python scenario: passed")
