// A creator and a payer, through the TypeScript types generated from
// openapi/openapi.json (openapi-typescript) and openapi-fetch, against a live
// tally server and the fake Stripe. Run by scripts/sdk.sh, which starts both
// and passes TALLY_URL, FAKE_STRIPE_URL, ADMIN_TOKEN, CREATOR_TOKEN and
// PAYER_TOKEN.
//
// The server runs with a 1 s earnings hold, a 200 ms settlement sweep and a
// 10-credit minimum withdrawal; credits are worth $0.10 and the marketplace
// share is 30 %. Every amount below is exact. `tsc` type-checks this file
// against the generated types before it runs.

import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import createClient from "openapi-fetch";
import { Webhook } from "standardwebhooks";
import type { paths } from "./generated/schema.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const baseUrl = env("TALLY_URL");
const stripeUrl = env("FAKE_STRIPE_URL");
const client = (token: string) =>
  createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${env(token)}` } });
const admin = client("ADMIN_TOKEN");
const creator = client("CREATOR_TOKEN");
const payer = client("PAYER_TOKEN");

/** The body of a response that must have this status. */
function expect<T>(result: { data?: T; error?: unknown; response: Response }, status: number): T {
  if (result.response.status !== status || result.data === undefined) {
    throw new Error(`expected ${status}, got ${result.response.status}: ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

function check(what: string, got: unknown, want: unknown): void {
  const [g, w] = [JSON.stringify(got), JSON.stringify(want)];
  if (g !== w) throw new Error(`${what}: expected ${w}, got ${g}`);
  console.log(`ok  ${what} = ${g}`);
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// The price book and a Pro creator organization with a public agent.
const model = expect(
  await admin.PUT("/v1/admin/models/{model_id}", {
    params: { path: { model_id: "sdk-model" } },
    body: { runtime_infra: "0.3", provider_cost: "0.0021" },
  }),
  200,
);
check("model runtime_infra", model.runtime_infra, "0.3");
const org = expect(await creator.POST("/v1/orgs", { body: { name: "Acme Agents" } }), 201);
check("creator's role", org.role, "owner");
expect(await admin.POST("/v1/admin/plan-grants", { body: { plan: "pro", org_id: org.id } }), 201);
const agent = expect(
  await creator.POST("/v1/orgs/{org_id}/agents", {
    params: { path: { org_id: org.id } },
    body: { name: "Research helper", model: "sdk-model", visibility: "public", publisher_addon: "10" },
  }),
  201,
);
check("agent cost per message", agent.estimated_cost_per_message, "10.3");

// The payer buys 150 credits by invoice; an operator settles the order.
// The payer's systems listen for paid top-ups: a receiver on this machine
// (the server allows http and loopback with TALLY_WEBHOOKS_ALLOW_PRIVATE).
const received: { body: string; headers: Record<string, string> }[] = [];
const receiver = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers[k] = v;
    received.push({ body: Buffer.concat(chunks).toString("utf8"), headers });
    res.writeHead(204).end();
  });
});
await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
const receiverPort = (receiver.address() as AddressInfo).port;
const endpoint = expect(
  await payer.POST("/v1/webhook-endpoints", {
    body: { url: `http://127.0.0.1:${receiverPort}/hooks/tally`, events: ["top_up.paid"] },
  }),
  201,
);
check("endpoint secret prefix", endpoint.secret.slice(0, 6), "whsec_");

const me = expect(await payer.GET("/v1/me"), 200);
const wallet = { params: { path: { wallet_id: me.wallet_id } } };
const order = expect(
  await payer.POST("/v1/wallets/{wallet_id}/top-ups", {
    params: { path: { wallet_id: me.wallet_id }, header: { "Idempotency-Key": "ts-top-up-1" } },
    body: { pack_id: "standard", method: "manual" },
  }),
  201,
);
check("order", [order.status, order.credits, order.amount_usd, order.checkout_url], ["pending", "150", "15.00", null]);
check("balance before settlement", expect(await payer.GET("/v1/wallets/{wallet_id}", wallet), 200).balance, "0");
const paid = expect(
  await admin.POST("/v1/admin/top-ups/{top_up_id}/settle", {
    params: { path: { top_up_id: order.id }, header: { "Idempotency-Key": "ts-settle-1" } },
  }),
  200,
);
check("settled order", [paid.status, paid.receipt_number], ["paid", 1]);
check("balance after settlement", expect(await payer.GET("/v1/wallets/{wallet_id}", wallet), 200).balance, "150");

// The settlement's top_up.paid reaches the receiver, signed per Standard
// Webhooks: the library verifies it with the endpoint's secret, and a body
// changed on the way fails verification.
const delivery = await waitFor("the top_up.paid delivery", async () => received[0]);
const event = new Webhook(endpoint.secret).verify(delivery.body, delivery.headers) as {
  id: string;
  type: string;
  data: { id: string; status: string; credits: string };
};
check(
  "delivered event",
  [event.type, event.data.id, event.data.status, event.data.credits, delivery.headers["webhook-id"]],
  ["top_up.paid", order.id, "paid", "150", event.id],
);
let tamperedRefusal = "";
try {
  new Webhook(endpoint.secret).verify(delivery.body.replaceAll('"150"', '"1500"'), delivery.headers);
} catch (e) {
  tamperedRefusal = (e as Error).constructor.name;
}
check("a changed body is refused", tamperedRefusal, "WebhookVerificationError");
receiver.close();

// The settled order's invoice (its receipt number, gap-free) and its PDF.
const invoices = expect(await payer.GET("/v1/wallets/{wallet_id}/invoices", wallet), 200);
const invoice = invoices.data[0];
if (!invoice) throw new Error("the settled order has no invoice");
const number = `TALLY-${new Date(invoice.issued_at).getUTCFullYear()}-000001`;
check(
  "invoice",
  [invoices.data.length, invoice.number, invoice.top_up_id, invoice.total_usd, invoice.tax_usd],
  [1, number, order.id, "15.00", "0.00"],
);
const pdf = await payer.GET("/v1/invoices/{invoice_id}/pdf", {
  params: { path: { invoice_id: invoice.id } },
  parseAs: "arrayBuffer",
});
const pdfBytes = new Uint8Array(expect(pdf, 200));
check(
  "invoice PDF",
  [pdf.response.headers.get("Content-Type"), new TextDecoder().decode(pdfBytes.slice(0, 5))],
  ["application/pdf", "%PDF-"],
);
check("invoice PDF size is a real page", pdfBytes.length > 1_000 && pdfBytes.length < 500_000, true);
check("invoice PDF names its number", pdf.response.headers.get("Content-Disposition"), `inline; filename="${number}.pdf"`);

// Quote, then two messages (the first one sent twice with the same key).
const quote = expect(
  await payer.GET("/v1/agents/{agent_id}/quote", { params: { path: { agent_id: agent.id } } }),
  200,
);
check(
  "quote",
  [quote.runtime_infra, quote.publisher_addon, quote.total, quote.balance, quote.sufficient, quote.free],
  ["0.3", "10", "10.3", "150", true, false],
);
const charge = (key: string) =>
  payer.POST("/v1/agents/{agent_id}/charges", {
    params: { path: { agent_id: agent.id }, header: { "Idempotency-Key": key } },
  });
const first = expect(await charge("ts-msg-1"), 201);
check("first charge", [first.total, first.balance_after, first.free], ["10.3", "139.7", false]);
const again = await charge("ts-msg-1");
check(
  "retry replays the same charge",
  [expect(again, 201).id, again.response.headers.get("Idempotent-Replayed")],
  [first.id, "true"],
);
const second = expect(await charge("ts-msg-2"), 201);
check("second charge", [second.total, second.balance_after], ["10.3", "129.4"]);

// The wallet's history, newest first.
const history = expect(await payer.GET("/v1/wallets/{wallet_id}/transactions", wallet), 200);
check(
  "history",
  history.data.map((t) => [t.type, t.amount, t.balance_after]),
  [
    ["charge", "-10.3", "129.4"],
    ["charge", "-10.3", "139.7"],
    ["top_up", "150", "150"],
  ],
);
check("history has_more", history.has_more, false);
check("charge's transaction", history.data[0]?.id, second.transaction_id);

// Right after the messages the creator cannot withdraw: no payout account
// yet (the first reason that applies, whether or not the earnings settled).
const orgPath = { params: { path: { org_id: org.id } } };
const early = expect(await creator.GET("/v1/orgs/{org_id}/earnings", orgPath), 200);
check(
  "can_withdraw before settlement",
  [early.can_withdraw, early.reason, early.min_withdrawal],
  [false, "no_payout_account", "10"],
);

// The creator earns 70 % of the add-ons: 2 x 7 = 14 credits, available after the hold.
const earnings = await waitFor("earnings to settle", async () => {
  const e = expect(await creator.GET("/v1/orgs/{org_id}/earnings", orgPath), 200);
  return e.available === "14" ? e : undefined;
});
check(
  "earnings",
  [earnings.lifetime_gross, earnings.platform_share, earnings.pending, earnings.available],
  ["20", "6", "0", "14"],
);

// Connect a payout account; the fake Stripe finishes onboarding by webhook.
const account = expect(await creator.PUT("/v1/orgs/{org_id}/payout-account", orgPath), 200);
check("onboarding link", account.onboarding_url?.startsWith("https://connect.stripe.test/setup/"), true);
await waitFor("payouts to be enabled", async () => {
  const a = expect(await creator.GET("/v1/orgs/{org_id}/payout-account", orgPath), 200);
  return a.payouts_enabled ? a : undefined;
});
// Settled earnings (14 >= the minimum of 10) and payouts enabled: withdrawable.
const ready = expect(await creator.GET("/v1/orgs/{org_id}/earnings", orgPath), 200);
check("can_withdraw after settlement", [ready.available, ready.can_withdraw, ready.reason], ["14", true, null]);

// All available earnings: 14 credits = $1.40, sent as one Stripe transfer.
const payout = expect(
  await creator.POST("/v1/orgs/{org_id}/payouts", {
    params: { path: { org_id: org.id }, header: { "Idempotency-Key": "ts-payout-1" } },
    body: {},
  }),
  201,
);
check("payout", [payout.status, payout.amount, payout.usd], ["in_transit", "14", "1.40"]);
const after = expect(await creator.GET("/v1/orgs/{org_id}/earnings", orgPath), 200);
check("earnings after payout", [after.available, after.in_payout], ["0", "14"]);
check("can_withdraw after the payout", [after.can_withdraw, after.reason], [false, "below_minimum"]);
type Seen = { path: string; idempotency_key: string | null; form: Record<string, string> };
const seen = (await (await fetch(`${stripeUrl}/_fake/requests`)).json()) as Seen[];
check(
  "transfers at Stripe",
  seen
    .filter((r) => r.path === "/v1/transfers")
    .map((t) => [t.form.amount, t.form.currency, t.form.destination, t.idempotency_key]),
  [["140", "usd", account.account_id, payout.id]],
);
check("transfer id", payout.transfer_id?.startsWith("tr_"), true);

// Metered messages: the operator prices the model's tokens (2 and 8 credits
// per million) and a tool (0.5 a call). A hold reserves what the estimate
// would cost: 0.3 + 100,000 x 2 / 10^6 + 500,000 x 8 / 10^6 + 2 x 0.5 + the
// add-on 10 = 15.5 credits, taken from the available balance, not the balance.
const metered = expect(
  await admin.PUT("/v1/admin/models/{model_id}", {
    params: { path: { model_id: "sdk-model" } },
    body: { runtime_infra: "0.3", provider_cost: "0.0021", input_per_mtok: "2", output_per_mtok: "8" },
  }),
  200,
);
check("model token rates", [metered.input_per_mtok, metered.output_per_mtok], ["2", "8"]);
const tool = expect(
  await admin.PUT("/v1/admin/tools/{tool_id}", { params: { path: { tool_id: "sdk_search" } }, body: { price: "0.5" } }),
  200,
);
check("tool price", [tool.id, tool.price], ["sdk_search", "0.5"]);
const usage = (input_tokens: number, output_tokens: number, searches: number) => ({
  input_tokens,
  output_tokens,
  tool_calls: { sdk_search: searches },
});
const walletAmounts = async () => {
  const w = expect(await payer.GET("/v1/wallets/{wallet_id}", wallet), 200);
  return [w.balance, w.held, w.available];
};
const holdFor = async (key: string) =>
  expect(
    await payer.POST("/v1/agents/{agent_id}/holds", {
      params: { path: { agent_id: agent.id }, header: { "Idempotency-Key": key } },
      body: { estimate: { usage: usage(100_000, 500_000, 2) } },
    }),
    201,
  );
const hold = await holdFor("ts-hold-1");
check("hold", [hold.status, hold.amount, hold.free, hold.wallet_id], ["open", "15.5", false, me.wallet_id]);
check("wallet while held (balance, held, available)", await walletAmounts(), ["129.4", "15.5", "113.9"]);

// The message used less: 0.3 + 0.1 + 0.8 + 0.5 + 10 = 11.7 is charged from the
// hold and the other 3.8 goes back.
const captured = await payer.POST("/v1/holds/{hold_id}/capture", {
  params: { path: { hold_id: hold.id }, header: { "Idempotency-Key": "ts-capture-1" } },
  body: { usage: usage(50_000, 100_000, 1) },
});
const meteredCharge = expect(captured, 201);
check(
  "captured charge (total, held, uncollected, hold_id, balance_after)",
  [meteredCharge.total, meteredCharge.held, meteredCharge.uncollected, meteredCharge.hold_id, meteredCharge.balance_after],
  ["11.7", "15.5", "0", hold.id, "117.7"],
);
check(
  "capture headers",
  [captured.response.headers.get("X-Request-Cost"), captured.response.headers.get("X-Balance-Remaining")],
  ["11.7", "117.7"],
);
check("wallet after the capture", await walletAmounts(), ["117.7", "0", "117.7"]);
const done = expect(await payer.GET("/v1/holds/{hold_id}", { params: { path: { hold_id: hold.id } } }), 200);
check("captured hold", [done.status, done.charge_id], ["captured", meteredCharge.id]);

// A second hold, released (the request failed): everything comes back.
const secondHold = await holdFor("ts-hold-2");
check("second hold", [secondHold.status, secondHold.amount], ["open", "15.5"]);
check("wallet while held again", await walletAmounts(), ["117.7", "15.5", "102.2"]);
const released = expect(
  await payer.POST("/v1/holds/{hold_id}/release", {
    params: { path: { hold_id: secondHold.id }, header: { "Idempotency-Key": "ts-release-1" } },
  }),
  200,
);
check("released hold", [released.status, released.amount, released.charge_id ?? null], ["released", "15.5", null]);
check("wallet after the release", await walletAmounts(), ["117.7", "0", "117.7"]);

// An API key for the payer's server: a daily limit of 25 credits (two
// messages of 10.3), used as the bearer token of its own client.
const made = expect(await payer.POST("/v1/api-keys", { body: { name: "ts server", daily_limit: "25" } }), 201);
check("key", [made.secret.startsWith("tk_live_"), made.prefix, made.wallet_id], [true, made.secret.slice(0, 16), me.wallet_id]);
const keyed = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${made.secret}` } });
check("the key acts as the payer", expect(await keyed.GET("/v1/me"), 200).id, me.id);
for (const [n, remaining, balance] of [[1, "14.7", "107.4"], [2, "4.4", "97.1"]] as const) {
  const sent = await keyed.POST("/v1/agents/{agent_id}/charges", {
    params: { path: { agent_id: agent.id }, header: { "Idempotency-Key": `ts-key-msg-${n}` } },
  });
  check(`charge ${n} with the key`, expect(sent, 201).balance_after, balance);
  check(`key remaining after charge ${n}`, sent.response.headers.get("X-Key-Daily-Remaining"), remaining);
}
const refused = await keyed.POST("/v1/agents/{agent_id}/charges", {
  params: { path: { agent_id: agent.id }, header: { "Idempotency-Key": "ts-key-msg-3" } },
});
check(
  "third charge passes the key's limit",
  [refused.response.status, refused.error?.error.type, refused.error?.error.api_key_id],
  [429, "spend_limit_exceeded", made.id],
);
const key = expect(await payer.GET("/v1/api-keys/{key_id}", { params: { path: { key_id: made.id } } }), 200);
check("key cap state", [key.spent_today, key.daily_remaining], ["20.6", "4.4"]);
expect(await payer.DELETE("/v1/api-keys/{key_id}", { params: { path: { key_id: made.id } } }), 200);
const gone = await keyed.GET("/v1/me");
check("revoked key", [gone.response.status, gone.error?.error.type], [401, "api_key_revoked"]);
check("wallet after the key's charges", await walletAmounts(), ["97.1", "0", "97.1"]);

// Credit grants: 50 credits valid 30 days ($4 by invoice), then 5
// promotional credits from the operator. A message draws the promotional
// credits first, then the 30-day ones (they expire before the lifetime ones).
const order30 = expect(
  await payer.POST("/v1/wallets/{wallet_id}/top-ups", {
    params: { path: { wallet_id: me.wallet_id }, header: { "Idempotency-Key": "ts-top-up-2" } },
    body: { pack_id: "starter", method: "manual", validity: "30d" },
  }),
  201,
);
check("30-day order", [order30.amount_usd, order30.validity], ["4.00", "30d"]);
const paid30 = expect(
  await admin.POST("/v1/admin/top-ups/{top_up_id}/settle", {
    params: { path: { top_up_id: order30.id }, header: { "Idempotency-Key": "ts-settle-2" } },
  }),
  200,
);
const days = (Date.parse(paid30.credits_expire_at ?? "") - Date.parse(paid30.paid_at ?? "")) / 86_400_000;
check("30-day credits expire 30 days after payment", days, 30);
const promo = expect(
  await admin.POST("/v1/admin/wallets/{wallet_id}/grants", {
    params: { path: { wallet_id: me.wallet_id }, header: { "Idempotency-Key": "ts-grant-1" } },
    body: { amount: "5", category: "promotional", reason: "welcome" },
  }),
  201,
);
check("promotional grant", [promo.grant.remaining, promo.balance_after], ["5", "152.1"]);
const third = expect(
  await payer.POST("/v1/agents/{agent_id}/charges", {
    params: { path: { agent_id: agent.id }, header: { "Idempotency-Key": "ts-msg-3" } },
  }),
  201,
);
check("charge drawn from grants", [third.total, third.balance_after], ["10.3", "141.8"]);
const grants = expect(
  await payer.GET("/v1/wallets/{wallet_id}/grants", {
    params: { path: { wallet_id: me.wallet_id }, query: { active: false } },
  }),
  200,
);
check(
  "grants after the charge (newest first)",
  grants.data.map((g) => [g.source, g.category, g.amount, g.remaining]),
  [
    ["promotion", "promotional", "5", "0"],
    ["top_up", "paid", "50", "44.7"],
    ["top_up", "paid", "150", "97.1"],
  ],
);
const w30 = expect(await payer.GET("/v1/wallets/{wallet_id}", wallet), 200);
check("wallet credits by category", [w30.credits.paid, w30.credits.promotional], ["141.8", "0"]);
check("soonest expiring credits", w30.expiring_next?.amount, "44.7");

// The ledger holds together.
const report = expect(await admin.GET("/v1/admin/ledger/verify"), 200);
check("ledger verify", [report.ok, report.ledger_sum, report.breaches.length], [true, "0", 0]);
console.log("typescript scenario: passed");
