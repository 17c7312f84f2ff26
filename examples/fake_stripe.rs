//! The test suite's fake Stripe (`tally::stripe::fake`) as a process of its own, for the generated
//! SDKs' scenarios (`scripts/sdk.sh`): it answers the Stripe API calls tally
//! makes with Stripe's example objects, completes Connect onboarding by
//! sending tally a signed `account.updated`, and lists what it received at
//! `GET /_fake/requests`.
//!
//! ```text
//! cargo run --example fake_stripe -- [--bind 127.0.0.1:0] [--webhook-url URL]
//! ```
//!
//! It prints its base URL (for `STRIPE_API_BASE`) on the first line of
//! stdout, then serves until killed. tally must use its keys:
//! `STRIPE_SECRET_KEY=sk_test_fake`, `STRIPE_WEBHOOK_SECRET=whsec_test_0123456789abcdef`.

use std::io::Write;

use tally::stripe::fake as fake_stripe;

#[tokio::main]
async fn main() {
    let mut options = fake_stripe::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--bind", Some(v)) => options.bind = v,
            ("--webhook-url", Some(v)) => options.webhook_url = Some(v),
            _ => {
                eprintln!("usage: fake_stripe [--bind HOST:PORT] [--webhook-url URL]");
                std::process::exit(2);
            }
        }
    }
    let fake = fake_stripe::FakeStripe::start_with(options).await;
    println!("{}", fake.base_url);
    std::io::stdout().flush().expect("stdout");
    std::future::pending::<()>().await;
}
