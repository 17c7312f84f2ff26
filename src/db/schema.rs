//! The tables, identical on SQLite and PostgreSQL (kept by hand in step with
//! both `migrations/` trees; a test runs every migration up, down and up).

diesel::table! {
    people (id) {
        id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    orgs (id) {
        id -> Text,
        name -> Text,
        created_by -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    org_members (org_id, user_id) {
        org_id -> Text,
        user_id -> Text,
        role -> Text,
        daily_limit -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    accounts (id) {
        id -> BigInt,
        kind -> Text,
        owner_type -> Text,
        owner_id -> Text,
        public_id -> Nullable<Text>,
        balance -> Nullable<BigInt>,
        frozen -> Bool,
        daily_limit -> Nullable<BigInt>,
        weekly_limit -> Nullable<BigInt>,
        created_at -> Timestamp,
        low_balance_threshold -> Nullable<BigInt>,
        low_balance_below -> Bool,
        depleted_event_at -> Nullable<Timestamp>,
        auto_top_up_enabled -> Bool,
        auto_top_up_threshold -> Nullable<BigInt>,
        auto_top_up_pack_id -> Nullable<Text>,
        auto_top_up_validity -> Nullable<Text>,
        auto_top_up_failures -> Integer,
        auto_top_up_disabled_reason -> Nullable<Text>,
        stripe_customer_id -> Nullable<Text>,
        stripe_payment_method_id -> Nullable<Text>,
        auto_top_up_retry_after -> Nullable<Timestamp>,
        spent_day_key -> Nullable<Text>,
        spent_day -> BigInt,
        spent_week_key -> Nullable<Text>,
        spent_week -> BigInt,
    }
}

diesel::table! {
    journal_entries (id) {
        id -> BigInt,
        kind -> Text,
        reverses_entry_id -> Nullable<BigInt>,
        request_key -> Nullable<Text>,
        actor -> Nullable<Text>,
        memo -> Nullable<Text>,
        metadata -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    postings (id) {
        id -> BigInt,
        entry_id -> BigInt,
        account_id -> BigInt,
        amount -> BigInt,
        balance_after -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    idempotency_keys (scope, key) {
        scope -> Text,
        key -> Text,
        request_hash -> Text,
        state -> Text,
        lease_token -> Text,
        locked_until -> Timestamp,
        response_status -> Nullable<Integer>,
        response_body -> Nullable<Text>,
        response_headers -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    models (id) {
        id -> Text,
        runtime_infra -> BigInt,
        provider_cost_micro_usd -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        input_per_mtok -> Nullable<BigInt>,
        output_per_mtok -> Nullable<BigInt>,
        per_generation -> Nullable<BigInt>,
    }
}

diesel::table! {
    tools (id) {
        id -> Text,
        price -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    agents (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        model_id -> Text,
        visibility -> Text,
        publisher_addon -> BigInt,
        free_messages -> Integer,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    free_message_usage (agent_id, user_id) {
        agent_id -> Text,
        user_id -> Text,
        used -> Integer,
    }
}

diesel::table! {
    spend_counters (account_id, user_id, period) {
        account_id -> BigInt,
        user_id -> Text,
        period -> Text,
        spent -> BigInt,
    }
}

diesel::table! {
    charges (id) {
        id -> Text,
        agent_id -> Text,
        model_id -> Text,
        creator_org_id -> Text,
        user_id -> Text,
        payer_account_id -> BigInt,
        payer_org_id -> Nullable<Text>,
        free -> Bool,
        runtime_infra -> BigInt,
        publisher_addon -> BigInt,
        addon_forgone -> BigInt,
        platform_share -> BigInt,
        creator_earnings -> BigInt,
        total -> BigInt,
        provider_cost_micro_usd -> BigInt,
        entry_id -> BigInt,
        created_at -> Timestamp,
        input_tokens -> Nullable<BigInt>,
        output_tokens -> Nullable<BigInt>,
        generations -> Nullable<BigInt>,
        tool_calls -> Nullable<Text>,
        input_per_mtok -> Nullable<BigInt>,
        output_per_mtok -> Nullable<BigInt>,
        per_generation -> Nullable<BigInt>,
        tool_prices -> Nullable<Text>,
        input_tokens_cost -> Nullable<BigInt>,
        output_tokens_cost -> Nullable<BigInt>,
        tools_cost -> Nullable<BigInt>,
        generations_cost -> Nullable<BigInt>,
        hold_id -> Nullable<Text>,
        held -> BigInt,
        uncollected -> BigInt,
    }
}

diesel::table! {
    object_metadata (object_id, key) {
        object_id -> Text,
        key -> Text,
        value -> Text,
    }
}

diesel::table! {
    charge_refunds (id) {
        id -> Text,
        charge_id -> Text,
        amount -> BigInt,
        infra -> BigInt,
        platform_share -> BigInt,
        creator_from_pending -> BigInt,
        creator_from_available -> BigInt,
        creator_borne_by_platform -> BigInt,
        free_message_returned -> Bool,
        entry_id -> Nullable<BigInt>,
        reason -> Text,
        operator_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    holds (id) {
        id -> Text,
        agent_id -> Text,
        user_id -> Text,
        payer_account_id -> BigInt,
        held_account_id -> BigInt,
        payer_org_id -> Nullable<Text>,
        amount -> BigInt,
        free -> Bool,
        estimate -> Text,
        status -> Text,
        expires_at -> Timestamp,
        day_key -> Text,
        week_key -> Text,
        request_key -> Nullable<Text>,
        charge_id -> Nullable<Text>,
        created_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    earnings_accruals (id) {
        id -> BigInt,
        org_id -> Text,
        charge_id -> Text,
        amount -> BigInt,
        available_at -> Timestamp,
        settled_at -> Nullable<Timestamp>,
        settled_entry_id -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    top_ups (id) {
        id -> Text,
        wallet_account_id -> BigInt,
        wallet_id -> Text,
        created_by -> Text,
        pack_id -> Text,
        credits -> BigInt,
        bonus_credits -> BigInt,
        amount_cents -> BigInt,
        currency -> Text,
        method -> Text,
        status -> Text,
        request_key -> Nullable<Text>,
        checkout_session_id -> Nullable<Text>,
        checkout_url -> Nullable<Text>,
        payment_intent_id -> Nullable<Text>,
        receipt_number -> Nullable<BigInt>,
        credited_entry_id -> Nullable<BigInt>,
        settled_by -> Nullable<Text>,
        refunded_cents -> BigInt,
        reversed_credits -> BigInt,
        reversed_bonus -> BigInt,
        dispute_id -> Nullable<Text>,
        disputed_credits -> BigInt,
        disputed_bonus -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        paid_at -> Nullable<Timestamp>,
        paid_cents -> Nullable<BigInt>,
        paid_currency -> Nullable<Text>,
        validity -> Text,
        tax_rate -> Nullable<Text>,
    }
}

diesel::table! {
    receipt_counter (id) {
        id -> Integer,
        last_number -> BigInt,
    }
}

diesel::table! {
    stripe_events (id) {
        id -> Text,
        event_type -> Text,
        outcome -> Text,
        received_at -> Timestamp,
    }
}

diesel::table! {
    payout_accounts (org_id) {
        org_id -> Text,
        stripe_account_id -> Text,
        payouts_enabled -> Bool,
        details_submitted -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        bank_payout_failed_at -> Nullable<Timestamp>,
        bank_payout_failure_code -> Nullable<Text>,
        bank_payout_failure_message -> Nullable<Text>,
        failed_bank_payout_id -> Nullable<Text>,
    }
}

diesel::table! {
    payouts (id) {
        id -> Text,
        org_id -> Text,
        stripe_account_id -> Text,
        amount -> BigInt,
        usd_cents -> BigInt,
        status -> Text,
        request_key -> Nullable<Text>,
        requested_by -> Text,
        transfer_id -> Nullable<Text>,
        stripe_payout_id -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        send_attempts -> Integer,
        send_lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        destination_payment -> Nullable<Text>,
        bank_failed_at -> Nullable<Timestamp>,
        bank_failure_code -> Nullable<Text>,
        bank_failure_message -> Nullable<Text>,
    }
}

diesel::table! {
    plan_grants (id) {
        id -> Text,
        subject_type -> Text,
        subject_id -> Text,
        plan -> Text,
        until -> Nullable<Timestamp>,
        granted_by -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    subscriptions (id) {
        id -> Text,
        subject_type -> Text,
        subject_id -> Text,
        plan -> Text,
        status -> Text,
        past_due_since -> Nullable<Timestamp>,
        last_event_at -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        customer -> Nullable<Text>,
        cancel_at_period_end -> Bool,
    }
}

diesel::table! {
    subscription_checkouts (id) {
        id -> Text,
        subject_type -> Text,
        subject_id -> Text,
        plan -> Text,
        status -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    wallet_audit (id) {
        id -> BigInt,
        account_id -> BigInt,
        action -> Text,
        reason -> Text,
        actor -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    credit_grants (id) {
        id -> BigInt,
        public_id -> Text,
        account_id -> BigInt,
        category -> Text,
        amount -> BigInt,
        remaining -> BigInt,
        expires_at -> Nullable<Timestamp>,
        source -> Text,
        source_id -> Nullable<Text>,
        funded_by_account_id -> Nullable<BigInt>,
        entry_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        expiring_event_at -> Nullable<Timestamp>,
        live -> Bool,
    }
}

diesel::table! {
    grant_draws (id) {
        id -> BigInt,
        grant_id -> BigInt,
        entry_id -> BigInt,
        hold_id -> Nullable<Text>,
        amount -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::joinable!(org_members -> orgs (org_id));
diesel::joinable!(grant_draws -> credit_grants (grant_id));
diesel::joinable!(agents -> models (model_id));
diesel::joinable!(postings -> journal_entries (entry_id));
diesel::joinable!(postings -> accounts (account_id));

diesel::table! {
    billing_profiles (owner_type, owner_id) {
        owner_type -> Text,
        owner_id -> Text,
        profile -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    invoices (id) {
        id -> Text,
        number -> Text,
        sequence -> BigInt,
        top_up_id -> Text,
        wallet_account_id -> BigInt,
        wallet_id -> Text,
        issued_at -> Timestamp,
        seller -> Text,
        buyer -> Nullable<Text>,
        line -> Text,
        currency -> Text,
        subtotal_cents -> BigInt,
        tax_cents -> BigInt,
        total_cents -> BigInt,
        tax_source -> Text,
        tax_rate -> Nullable<Text>,
        tax_inclusive -> Bool,
        payment_method -> Text,
    }
}

diesel::table! {
    credit_note_counter (id) {
        id -> Integer,
        last_number -> BigInt,
    }
}

diesel::table! {
    credit_notes (id) {
        id -> Text,
        number -> Text,
        sequence -> BigInt,
        invoice_id -> Text,
        issued_at -> Timestamp,
        subtotal_cents -> BigInt,
        tax_cents -> BigInt,
        total_cents -> BigInt,
        reason -> Text,
    }
}

diesel::table! {
    auto_top_up_orders (id) {
        id -> Text,
        wallet_account_id -> BigInt,
        status -> Text,
        top_up_id -> Nullable<Text>,
        payment_intent_id -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        send_attempts -> Integer,
        send_lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    events (id) {
        id -> Text,
        #[sql_name = "type"]
        event_type -> Text,
        created_at -> Timestamp,
        subject_type -> Text,
        subject_id -> Text,
        wallet_id -> Nullable<Text>,
        data -> Text,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Text,
        owner_type -> Text,
        owner_id -> Text,
        url -> Text,
        description -> Nullable<Text>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamp>,
        disabled -> Bool,
        disabled_reason -> Nullable<Text>,
        failing_since -> Nullable<Timestamp>,
        created_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    webhook_endpoint_events (endpoint_id, event_type) {
        endpoint_id -> Text,
        event_type -> Text,
    }
}

diesel::table! {
    webhook_deliveries (event_id, endpoint_id) {
        event_id -> Text,
        endpoint_id -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Nullable<Timestamp>,
        leased_until -> Nullable<Timestamp>,
        lease_token -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> BigInt,
        event_id -> Text,
        endpoint_id -> Text,
        attempted_at -> Timestamp,
        status_code -> Nullable<Integer>,
        duration_ms -> BigInt,
        error -> Nullable<Text>,
        next_attempt_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(webhook_deliveries -> events (event_id));
diesel::joinable!(webhook_deliveries -> webhook_endpoints (endpoint_id));
diesel::joinable!(webhook_endpoint_events -> webhook_endpoints (endpoint_id));

diesel::allow_tables_to_appear_in_same_query!(
    people,
    orgs,
    org_members,
    accounts,
    journal_entries,
    postings,
    idempotency_keys,
    models,
    tools,
    agents,
    free_message_usage,
    spend_counters,
    charges,
    earnings_accruals,
    top_ups,
    receipt_counter,
    stripe_events,
    payout_accounts,
    payouts,
    plan_grants,
    subscriptions,
    wallet_audit,
    holds,
    subscription_checkouts,
    credit_grants,
    grant_draws,
    charge_refunds,
    billing_profiles,
    invoices,
    credit_note_counter,
    credit_notes,
    object_metadata,
    auto_top_up_orders,
    events,
    webhook_endpoints,
    webhook_endpoint_events,
    webhook_deliveries,
    webhook_attempts,
);
