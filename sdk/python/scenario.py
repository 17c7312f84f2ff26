"""A creator and a payer, through the Python client generated from
openapi/openapi.json (openapi-python-client), against a live tally server and
the fake Stripe. Run by scripts/sdk.sh, which starts both and passes:

  TALLY_URL, FAKE_STRIPE_URL, ADMIN_TOKEN, CREATOR_TOKEN, PAYER_TOKEN

The server runs with a 1 s earnings hold, a 200 ms settlement sweep and a
10-credit minimum withdrawal; credits are worth $0.10 and the marketplace
share is 30 %. Every amount below is exact.
"""

import http.server
import json
import os
import sys
import threading
import time
import urllib.request

from standardwebhooks.webhooks import Webhook

from tally_client import AuthenticatedClient
from tally_client.api.admin import create_grant, put_model, put_tool, create_plan_grant, settle_top_up, verify_ledger
from tally_client.api.agents import create_agent
from tally_client.api.api_keys import create_api_key, get_api_key, revoke_api_key
from tally_client.api.charges import create_charge, get_quote
from tally_client.api.earnings import get_earnings
from tally_client.api.holds import capture_hold, create_hold, get_hold, release_hold
from tally_client.api.invoices import get_invoice_pdf, list_invoices
from tally_client.api.organizations import create_org
from tally_client.api.payouts import connect_payout_account, create_payout, get_payout_account
from tally_client.api.people import get_me
from tally_client.api.top_ups import create_top_up
from tally_client.api.wallets import get_wallet, list_wallet_grants, list_wallet_transactions
from tally_client.api.webhook_endpoints import create_webhook_endpoint
from tally_client.models import (
    AgentVisibility,
    CaptureHoldRequest,
    CreateApiKeyRequest,
    CreateHoldRequest,
    CreateAgentRequest,
    CreateGrantRequest,
    CreateOrgRequest,
    CreatePayoutRequest,
    CreatePlanGrantRequest,
    CreateTopUpRequest,
    CreateWebhookEndpointRequest,
    ErrorResponse,
    GrantCategory,
    GrantSource,
    HoldEstimate,
    PutModelRequest,
    PutToolRequest,
    TopUpMethod,
    UsageInput,
    UsageInputToolCallsType0,
    Validity,
    WithdrawalBlock,
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

# The payer's systems listen for paid top-ups: a receiver on this machine
# (the server allows http and loopback with TALLY_WEBHOOKS_ALLOW_PRIVATE).
received = []


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received.append((body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()
endpoint = expect(
    create_webhook_endpoint.sync_detailed(
        client=payer,
        body=CreateWebhookEndpointRequest(
            url=f"http://127.0.0.1:{receiver.server_address[1]}/hooks/tally", events=["top_up.paid"]
        ),
    ),
    201,
)
check("endpoint secret prefix", endpoint.secret[:6], "whsec_")

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

# The settlement's top_up.paid reaches the receiver, signed per Standard
# Webhooks: the library verifies it with the endpoint's secret, and a body
# changed on the way fails verification.
wait_for("the top_up.paid delivery", lambda: received)
body, headers = received[0]
event = Webhook(endpoint.secret).verify(body, headers)
check(
    "delivered event",
    (event["type"], event["data"]["id"], event["data"]["status"], event["data"]["credits"], headers["webhook-id"]),
    ("top_up.paid", order.id, "paid", "150", event["id"]),
)
try:
    Webhook(endpoint.secret).verify(body.replace(b'"150"', b'"1500"'), headers)
    sys.exit("a changed body passed verification")
except Exception as e:  # WebhookVerificationError
    check("a changed body is refused", type(e).__name__, "WebhookVerificationError")

# The settled order's invoice (its receipt number, gap-free) and its PDF.
invoices = expect(list_invoices.sync_detailed(wallet_id, client=payer), 200)
invoice = invoices.data[0]
number = f"TALLY-{invoice.issued_at.year}-000001"
check(
    "invoice",
    (len(invoices.data), invoice.number, invoice.top_up_id, invoice.total_usd, invoice.tax_usd),
    (1, number, order.id, "15.00", "0.00"),
)
pdf = get_invoice_pdf.sync_detailed(invoice.id, client=payer)
check("invoice PDF", (pdf.status_code, pdf.headers.get("Content-Type"), pdf.content[:5]), (200, "application/pdf", b"%PDF-"))
check("invoice PDF size is a real page", 1_000 < len(pdf.content) < 500_000, True)
check("invoice PDF names its number", pdf.headers.get("Content-Disposition"), f'inline; filename="{number}.pdf"')

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

# Right after the messages the creator cannot withdraw: no payout account
# yet (the first reason that applies, whether or not the earnings settled).
early = expect(get_earnings.sync_detailed(org.id, client=creator), 200)
check("can_withdraw before settlement", (early.can_withdraw, early.reason, early.min_withdrawal), (False, WithdrawalBlock.NO_PAYOUT_ACCOUNT, "10"))

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
# Settled earnings (14 >= the minimum of 10) and payouts enabled: withdrawable.
ready = expect(get_earnings.sync_detailed(org.id, client=creator), 200)
check("can_withdraw after settlement", (ready.available, ready.can_withdraw, ready.reason), ("14", True, None))

# All available earnings: 14 credits = $1.40, sent as one Stripe transfer.
payout = expect(
    create_payout.sync_detailed(org.id, client=creator, body=CreatePayoutRequest(), idempotency_key="py-payout-1"),
    201,
)
check("payout", (payout.status, payout.amount, payout.usd), ("in_transit", "14", "1.40"))
earnings = expect(get_earnings.sync_detailed(org.id, client=creator), 200)
check("earnings after payout", (earnings.available, earnings.in_payout), ("0", "14"))
check("can_withdraw after the payout", (earnings.can_withdraw, earnings.reason), (False, WithdrawalBlock.BELOW_MINIMUM))
with urllib.request.urlopen(f"{STRIPE}/_fake/requests") as r:
    transfers = [x for x in json.load(r) if x["path"] == "/v1/transfers"]
check(
    "transfers at Stripe",
    [(t["form"]["amount"], t["form"]["currency"], t["form"]["destination"], t["idempotency_key"]) for t in transfers],
    [("140", "usd", account.account_id, payout.id)],
)
check("transfer id", payout.transfer_id.startswith("tr_"), True)

# Metered messages: the operator prices the model's tokens (2 and 8 credits
# per million) and a tool (0.5 a call). A hold reserves what the estimate
# would cost: 0.3 + 100,000 x 2 / 10^6 + 500,000 x 8 / 10^6 + 2 x 0.5 + the
# add-on 10 = 15.5 credits, taken from the available balance, not the balance.
model = expect(
    put_model.sync_detailed(
        "sdk-model",
        client=admin,
        body=PutModelRequest(runtime_infra="0.3", provider_cost="0.0021", input_per_mtok="2", output_per_mtok="8"),
    ),
    200,
)
check("model token rates", (model.input_per_mtok, model.output_per_mtok), ("2", "8"))
tool = expect(put_tool.sync_detailed("sdk_search", client=admin, body=PutToolRequest(price="0.5")), 200)
check("tool price", (tool.id, tool.price), ("sdk_search", "0.5"))


def usage(input_tokens: int, output_tokens: int, searches: int) -> UsageInput:
    return UsageInput(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tool_calls=UsageInputToolCallsType0.from_dict({"sdk_search": searches}),
    )


def wallet_amounts():
    w = expect(get_wallet.sync_detailed(wallet_id, client=payer), 200)
    return (w.balance, w.held, w.available)


def hold_for(key: str):
    body = CreateHoldRequest(estimate=HoldEstimate(usage=usage(100_000, 500_000, 2)))
    return expect(create_hold.sync_detailed(agent.id, client=payer, body=body, idempotency_key=key), 201)


hold = hold_for("py-hold-1")
check("hold", (hold.status, hold.amount, hold.free, hold.wallet_id), ("open", "15.5", False, wallet_id))
check("wallet while held (balance, held, available)", wallet_amounts(), ("129.4", "15.5", "113.9"))

# The message used less: 0.3 + 0.1 + 0.8 + 0.5 + 10 = 11.7 is charged from the
# hold and the other 3.8 goes back.
captured = capture_hold.sync_detailed(
    hold.id,
    client=payer,
    body=CaptureHoldRequest(usage=usage(50_000, 100_000, 1)),
    idempotency_key="py-capture-1",
)
charge = expect(captured, 201)
check(
    "captured charge (total, held, uncollected, hold_id, balance_after)",
    (charge.total, charge.held, charge.uncollected, charge.hold_id, charge.balance_after),
    ("11.7", "15.5", "0", hold.id, "117.7"),
)
check(
    "capture headers",
    (captured.headers.get("X-Request-Cost"), captured.headers.get("X-Balance-Remaining")),
    ("11.7", "117.7"),
)
check("wallet after the capture", wallet_amounts(), ("117.7", "0", "117.7"))
done = expect(get_hold.sync_detailed(hold.id, client=payer), 200)
check("captured hold", (done.status, done.charge_id), ("captured", charge.id))

# A second hold, released (the request failed): everything comes back.
second_hold = hold_for("py-hold-2")
check("second hold", (second_hold.status, second_hold.amount), ("open", "15.5"))
check("wallet while held again", wallet_amounts(), ("117.7", "15.5", "102.2"))
released = expect(release_hold.sync_detailed(second_hold.id, client=payer, idempotency_key="py-release-1"), 200)
check("released hold", (released.status, released.amount, released.charge_id), ("released", "15.5", None))
check("wallet after the release", wallet_amounts(), ("117.7", "0", "117.7"))

# An API key for the payer's server: a daily limit of 25 credits (two
# messages of 10.3), used as the bearer token of its own client.
made = expect(
    create_api_key.sync_detailed(client=payer, body=CreateApiKeyRequest(name="py server", daily_limit="25")), 201
)
check("key", (made.secret.startswith("tk_live_"), made.prefix, made.wallet_id), (True, made.secret[:16], wallet_id))
keyed = AuthenticatedClient(base_url=URL, token=made.secret, raise_on_unexpected_status=True)
check("the key acts as the payer", expect(get_me.sync_detailed(client=keyed), 200).id, me.id)
for n, (remaining, balance) in enumerate([("14.7", "107.4"), ("4.4", "97.1")], start=1):
    sent = create_charge.sync_detailed(agent.id, client=keyed, idempotency_key=f"py-key-msg-{n}")
    check(f"charge {n} with the key", expect(sent, 201).balance_after, balance)
    check(f"key remaining after charge {n}", sent.headers.get("X-Key-Daily-Remaining"), remaining)
refused = create_charge.sync_detailed(agent.id, client=keyed, idempotency_key="py-key-msg-3")
check(
    "third charge passes the key's limit",
    (refused.status_code, refused.parsed.error.type_, refused.parsed.error.api_key_id),
    (429, "spend_limit_exceeded", made.id),
)
key = expect(get_api_key.sync_detailed(made.id, client=payer), 200)
check("key cap state", (key.spent_today, key.daily_remaining), ("20.6", "4.4"))
expect(revoke_api_key.sync_detailed(made.id, client=payer), 200)
gone = get_me.sync_detailed(client=keyed)
check("revoked key", (gone.status_code, gone.parsed.error.type_), (401, "api_key_revoked"))
check("wallet after the key's charges", wallet_amounts(), ("97.1", "0", "97.1"))

# Credit grants: 50 credits valid 30 days ($4 by invoice), then 5
# promotional credits from the operator. A message draws the promotional
# credits first, then the 30-day ones (they expire before the lifetime ones).
order = expect(
    create_top_up.sync_detailed(
        wallet_id,
        client=payer,
        body=CreateTopUpRequest(pack_id="starter", method=TopUpMethod.MANUAL, validity=Validity("30d")),
        idempotency_key="py-top-up-2",
    ),
    201,
)
check("30-day order", (order.amount_usd, order.validity), ("4.00", Validity("30d")))
paid = expect(settle_top_up.sync_detailed(order.id, client=admin, idempotency_key="py-settle-2"), 200)
check("30-day credits expire 30 days after payment", (paid.credits_expire_at - paid.paid_at).days, 30)
promo = expect(
    create_grant.sync_detailed(
        wallet_id,
        client=admin,
        body=CreateGrantRequest(amount="5", category=GrantCategory.PROMOTIONAL, reason="welcome"),
        idempotency_key="py-grant-1",
    ),
    201,
)
check("promotional grant", (promo.grant.remaining, promo.balance_after), ("5", "152.1"))
third = expect(create_charge.sync_detailed(agent.id, client=payer, idempotency_key="py-msg-3"), 201)
check("charge drawn from grants", (third.total, third.balance_after), ("10.3", "141.8"))
grants = expect(list_wallet_grants.sync_detailed(wallet_id, client=payer, active=False), 200)
check(
    "grants after the charge (newest first)",
    [(g.source, g.category, g.amount, g.remaining) for g in grants.data],
    [
        (GrantSource.PROMOTION, GrantCategory.PROMOTIONAL, "5", "0"),
        (GrantSource.TOP_UP, GrantCategory.PAID, "50", "44.7"),
        (GrantSource.TOP_UP, GrantCategory.PAID, "150", "97.1"),
    ],
)
w = expect(get_wallet.sync_detailed(wallet_id, client=payer), 200)
check("wallet credits by category", (w.credits_.paid, w.credits_.promotional), ("141.8", "0"))
check("soonest expiring credits", w.expiring_next.amount, "44.7")

# The ledger holds together.
report = expect(verify_ledger.sync_detailed(client=admin), 200)
check("ledger verify", (report.ok, report.ledger_sum, len(report.breaches)), (True, "0", 0))
print("python scenario: passed")
