"""A scenario with the client openapi-generator writes from openapi/openapi-3.0.json
(package tally_openapi_client), against a live server: exact amounts at each step."""

import os
import uuid

import tally_openapi_client as t


def client(token: str) -> t.ApiClient:
    config = t.Configuration(host=os.environ["TALLY_URL"], access_token=token)
    return t.ApiClient(config)


# Health, readiness and metrics (tag `operations`) are not SDK methods.
assert not hasattr(t, "OperationsApi")

payer = client(os.environ["PAYER_TOKEN"])
admin = client(os.environ["ADMIN_TOKEN"])

me = t.PeopleApi(payer).get_me()
assert me.id == "sdk-payer", me
wallet = t.WalletsApi(payer).get_wallet(me.wallet_id)
assert (wallet.balance, wallet.held, wallet.frozen) == ("0", "0", False), wallet

# An operator credits 150, the same key again is replayed: credited once.
key = str(uuid.uuid4())
body = t.CreateAdjustmentRequest(amount="150", reason="openapi-generator scenario")
first = t.AdminApi(admin).create_adjustment_with_http_info(me.wallet_id, key, body)
assert first.status_code == 201, first
again = t.AdminApi(admin).create_adjustment_with_http_info(me.wallet_id, key, body)
assert {k.lower(): v for k, v in again.headers.items()}.get("idempotent-replayed") == "true", again.headers
assert again.data == first.data

wallet = t.WalletsApi(payer).get_wallet(me.wallet_id)
assert (wallet.balance, wallet.available, wallet.usd_value) == ("150", "150", "15.00"), wallet
page = t.WalletsApi(payer).list_wallet_transactions(me.wallet_id)
assert [(x.amount, x.balance_after) for x in page.data] == [("150", "150")], page

report = t.AdminApi(admin).verify_ledger()
assert report.ok and report.ledger_sum == "0", report
print("openapi-generator scenario passed")
