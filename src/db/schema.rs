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

diesel::joinable!(org_members -> orgs (org_id));
diesel::joinable!(postings -> journal_entries (entry_id));
diesel::joinable!(postings -> accounts (account_id));

diesel::allow_tables_to_appear_in_same_query!(
    people,
    orgs,
    org_members,
    accounts,
    journal_entries,
    postings,
    idempotency_keys,
);
