//! How domain types are stored: `Credits` as a BIGINT of micro-credits and
//! each closed set of names as TEXT, for both backends at once (the
//! `MultiBackend` of [`super::DbConn`]). With these, a row carries
//! `Credits` and enums, and a misspelt status does not compile.
//!
//! The `AsExpression`/`FromSqlRow` derives sit on the types themselves (as
//! Lemmy's newtypes do); the conversions live here, beside the connection.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::Sqlite;

use super::MultiBackend;
use crate::domain::{
    AccountKind, CheckoutStatus, Credits, EntryKind, FreezeAction, HoldStatus, OrgRole, OwnerType,
    PayoutStatus, SubscriptionStatus, TopUpMethod, TopUpStatus, Visibility,
};
use crate::domain::{AutoTopUpStatus, GrantCategory, GrantSource, Validity};

type RawValue<'a> = <MultiBackend as Backend>::RawValue<'a>;

impl ToSql<BigInt, MultiBackend> for Credits {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((BigInt, self.micros_ref()));
        Ok(IsNull::No)
    }
}

impl FromSql<BigInt, MultiBackend> for Credits {
    fn from_sql(bytes: RawValue<'_>) -> deserialize::Result<Self> {
        Ok(Credits::from_micros(bytes.from_sql::<i64, BigInt>()?))
    }
}

// Each backend on its own too: diesel's multi-backend bind collector and
// insert statements ask every backend for the conversion.
macro_rules! credits_on {
    ($($db:ty),*) => {$(
        impl ToSql<BigInt, $db> for Credits {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, $db>) -> serialize::Result {
                <i64 as ToSql<BigInt, $db>>::to_sql(self.micros_ref(), out)
            }
        }

        impl FromSql<BigInt, $db> for Credits {
            fn from_sql(bytes: <$db as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                <i64 as FromSql<BigInt, $db>>::from_sql(bytes).map(Credits::from_micros)
            }
        }
    )*};
}

credits_on!(Pg, Sqlite);

/// TEXT conversions of a closed set with `as_str` and `FromStr`: an unknown
/// stored name is a deserialization error, never a default.
macro_rules! text_enum {
    ($($name:ty),* $(,)?) => {$(
        impl ToSql<Text, MultiBackend> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
                out.set_value((Text, self.as_str()));
                Ok(IsNull::No)
            }
        }

        impl FromSql<Text, MultiBackend> for $name {
            fn from_sql(bytes: RawValue<'_>) -> deserialize::Result<Self> {
                let text = bytes.from_sql::<String, Text>()?;
                text.parse::<$name>().map_err(Into::into)
            }
        }

        text_enum!(@on $name, Pg);
        text_enum!(@on $name, Sqlite);
    )*};
    (@on $name:ty, $db:ty) => {
        impl ToSql<Text, $db> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, $db>) -> serialize::Result {
                <str as ToSql<Text, $db>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, $db> for $name {
            fn from_sql(bytes: <$db as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, $db>>::from_sql(bytes)?;
                text.parse::<$name>().map_err(Into::into)
            }
        }
    };
}

text_enum!(OwnerType, AccountKind, EntryKind, HoldStatus, OrgRole, Visibility);
text_enum!(TopUpStatus, TopUpMethod, PayoutStatus, SubscriptionStatus, CheckoutStatus, FreezeAction);
text_enum!(GrantCategory, GrantSource, Validity, AutoTopUpStatus);
