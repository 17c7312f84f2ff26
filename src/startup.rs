//! Pool -> migrations -> platform accounts -> App -> HttpServer. Used by
//! `main` and by the tests, which start the real server on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, App, HttpServer};
use futures_util::FutureExt;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{self, docs::ApiDoc, AppState};
use crate::auth::JwtVerifier;
use crate::config::Settings;
use crate::db::{self, Manager, Pool};
use crate::error::REQUEST_ID;
use crate::ledger::PlatformAccounts;
use crate::services::Ctx;
use crate::stripe::StripeGateway;
use diesel::r2d2::ManageConnection;

/// Opens the pool, applies pending migrations and makes sure the platform
/// accounts exist.
pub fn open_database(settings: &Settings) -> Result<(Pool, PlatformAccounts), String> {
    prepare_database(settings, db::build_pool(manager(settings), settings.pool_size)?)
}

/// The pool's connection manager for `DATABASE_URL`.
pub fn manager(settings: &Settings) -> Manager {
    Manager::new(settings.database.clone(), settings.sqlite_synchronous_full)
        .with_pg_statement_cache(settings.pg_statement_cache)
}

/// [`open_database`] for a one-shot command: a pool of one connection that
/// opens nothing in the background, so the process can exit at any moment.
pub fn open_database_once(settings: &Settings) -> Result<(Pool, PlatformAccounts), String> {
    prepare_database(settings, db::build_one_shot_pool(manager(settings))?)
}

/// Runs the pending migrations: through `DATABASE_MIGRATION_URL` on a
/// connection of its own (closed after), straight to the primary, when set;
/// else on a connection of the pool.
fn prepare_database(settings: &Settings, pool: Pool) -> Result<(Pool, PlatformAccounts), String> {
    let applied = match &settings.migration_database {
        Some(target) => {
            let mut direct = Manager::new(target.clone(), settings.sqlite_synchronous_full)
                .with_pg_statement_cache(settings.pg_statement_cache)
                .connect()
                .map_err(|e| e.to_string())?;
            db::run_migrations(&mut direct)
                .map_err(|e| format!("migrations failed on {}: {e}", target.display()))?
        }
        None => {
            let mut conn = pool.get().map_err(|e| format!("cannot get a database connection: {e}"))?;
            db::run_migrations(&mut conn)
                .map_err(|e| format!("migrations failed on {}: {e}", settings.database.display()))?
        }
    };
    for name in applied {
        tracing::info!(migration = %name, "migration applied");
    }
    let mut conn = pool.get().map_err(|e| format!("cannot get a database connection: {e}"))?;
    let platform = db::write_tx(&mut conn, PlatformAccounts::ensure)
        .map_err(|e| format!("cannot create the platform accounts: {e}"))?;
    Ok((pool, platform))
}

/// The flows' runtime over an open database: the payment gateway (when
/// Stripe is configured) and the SQLite write gate.
pub fn runtime(
    settings: Settings,
    pool: Pool,
    platform: PlatformAccounts,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<AppState, String> {
    let gateway = match &settings.stripe {
        Some(s) => Some(Arc::new(crate::flows::gateway::Metered::new(
            Arc::new(StripeGateway::new(s)?),
            metrics.clone(),
        )) as Arc<dyn crate::flows::PaymentGateway>),
        None => None,
    };
    let write_gate =
        db::pool_write_gate(&pool).map_err(|e| format!("cannot get a database connection: {e}"))?;
    let exports = crate::flows::exports::ExportSlots::new(settings.max_concurrent_exports);
    // The replica's pool is half the primary's: it serves the bulk reads only.
    let replica = settings.replica_database.clone().map(|target| {
        tracing::info!(replica = %target.display(), "history, exports, reports and listings read the replica");
        Arc::new(db::replica::Replica::open(
            target,
            (settings.pool_size / 2).max(1),
            settings.pg_statement_cache,
            settings.replica_max_lag,
        ))
    });
    Ok(AppState {
        pool,
        ctx: Ctx { settings: Arc::new(settings), platform },
        gateway,
        metrics,
        write_gate,
        exports,
        draining: Default::default(),
        groups: Default::default(),
        replica,
    })
}

pub struct Application {
    port: u16,
    server: Server,
    /// The listener of `TALLY_METRICS_BIND`, serving `/metrics` only.
    metrics: Option<(u16, Server)>,
    state: web::Data<AppState>,
}

/// Begins the shutdown: `/readyz` answers 503 at once, the listeners keep
/// serving for `TALLY_SHUTDOWN_DRAIN` (so a load balancer sees it and sends
/// nothing more), then stop gracefully. A second call stops them at once.
#[derive(Clone)]
pub struct Shutdown {
    draining: Arc<std::sync::atomic::AtomicBool>,
    servers: Vec<actix_web::dev::ServerHandle>,
    drain: std::time::Duration,
}

impl Shutdown {
    pub fn begin(&self) {
        let servers = self.servers.clone();
        if self.draining.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::info!("shutdown asked again: stopping now");
            for server in &servers {
                // The stop is sent now; its completion is awaited by run_until_stopped.
                drop(server.stop(true));
            }
            return;
        }
        let drain = self.drain;
        tracing::info!(drain = %humantime::format_duration(drain), "shutdown begun: not ready, draining");
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            for server in servers {
                server.stop(true).await;
            }
        });
    }
}

/// SIGINT or SIGTERM (SIGINT only off Unix).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => drop(tokio::signal::ctrl_c().await),
        }
    }
    #[cfg(not(unix))]
    drop(tokio::signal::ctrl_c().await);
}

impl Application {
    /// Validates the settings, opens and migrates the database and binds the
    /// listener; the server runs once [`Application::run_until_stopped`] is awaited.
    pub fn build(settings: Settings) -> Result<Self, String> {
        settings.require_jwt().map_err(|e| e.to_string())?;
        let verifier = web::Data::new(JwtVerifier::new(&settings.jwt).map_err(|e| e.to_string())?);
        let (pool, platform) = open_database(&settings)?;
        let listener = TcpListener::bind(&settings.bind)
            .map_err(|e| format!("cannot listen on {}: {e}", settings.bind))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let workers = settings.workers;
        let metrics = Arc::new(crate::metrics::Metrics::new().map_err(|e| format!("metrics: {e}"))?);
        let state = web::Data::new(runtime(settings, pool, platform, metrics.clone())?);
        let app_state = state.clone();
        let mut server =
            HttpServer::new(move || build_app(app_state.clone(), verifier.clone(), metrics.clone()));
        if let Some(n) = workers {
            server = server.workers(n);
        }
        // Signals are handled by serve_until_signalled, which drains first.
        let server = server
            .listen(listener)
            .map_err(|e| format!("cannot serve: {e}"))?
            .disable_signals()
            .shutdown_timeout(10)
            .run();
        let metrics = match state.ctx.settings.metrics_bind.clone() {
            Some(bind) => Some(metrics_server(&bind, state.clone())?),
            None => None,
        };
        Ok(Application { port, server, metrics, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the `TALLY_METRICS_BIND` listener, when there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// What begins the shutdown (SIGINT and SIGTERM call it too).
    pub fn shutdown_handle(&self) -> Shutdown {
        let mut servers = vec![self.server.handle()];
        servers.extend(self.metrics.as_ref().map(|(_, s)| s.handle()));
        Shutdown {
            draining: self.state.draining.clone(),
            servers,
            drain: self.state.ctx.settings.shutdown_drain,
        }
    }

    pub fn pool(&self) -> Pool {
        self.state.pool.clone()
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// [`Application::run_until_stopped`], with SIGINT and SIGTERM
    /// beginning the shutdown ([`Shutdown::begin`]; a second one stops at
    /// once). `tally serve` runs this; tests stop their servers themselves.
    pub async fn serve_until_signalled(self) -> std::io::Result<()> {
        let shutdown = self.shutdown_handle();
        let signals = tokio::spawn(async move {
            loop {
                shutdown_signal().await;
                shutdown.begin();
            }
        });
        let result = self.run_until_stopped().await;
        signals.abort();
        result
    }

    /// Serves until stopped, running the periodic maintenance beside it (at
    /// once, then every `TALLY_SETTLEMENT_SWEEP`): recovery of payouts left
    /// unsent, the earnings settlement sweep, and the purge of expired
    /// idempotency keys; and webhook delivery (every `TALLY_WEBHOOK_POLL`).
    /// Every instance runs them; all are safe to run concurrently.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let maintenance = tokio::spawn(crate::flows::maintenance::run(self.state.clone().into_inner()));
        let webhooks = tokio::spawn(crate::flows::webhooks::run(self.state.clone().into_inner()));
        // The metrics listener serves beside the API and stops with it.
        let metrics = self.metrics.map(|(_, server)| (server.handle(), tokio::spawn(server)));
        let result = self.server.await;
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            let _ = task.await;
        }
        maintenance.abort();
        webhooks.abort();
        result
    }
}

/// `/metrics` alone, on its own listener (`TALLY_METRICS_BIND`), so the
/// API's listener need not expose it.
fn metrics_server(bind: &str, state: web::Data<AppState>) -> Result<(u16, Server), String> {
    let listener = TcpListener::bind(bind).map_err(|e| format!("cannot listen on {bind} (metrics): {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(api::health::metrics_text))
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(crate::error::ApiError::not_found("not found"))
            }))
    })
    .workers(1)
    .listen(listener)
    .map_err(|e| format!("cannot serve metrics: {e}"))?
    .disable_signals()
    .shutdown_timeout(10)
    .run();
    Ok((port, server))
}

/// The response headers a browser script may read: the request id, the
/// replay marker, `Retry-After` and the balance headers of charges and holds.
const EXPOSED_HEADERS: &[&str] =
    &["x-request-id", "idempotent-replayed", "retry-after", "x-balance-remaining", "x-request-cost"];

/// CORS for the origins of `TALLY_CORS_ORIGINS`; off (no CORS header at
/// all, preflights refused) when none is listed. Bearer tokens, not
/// cookies: credentials are not allowed.
fn cors(origins: &[String]) -> actix_web::middleware::Condition<actix_cors::Cors> {
    use actix_web::http::{header, Method};
    let mut cors = actix_cors::Cors::default()
        .allowed_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers(EXPOSED_HEADERS.iter().map(|h| HeaderName::from_static(h)))
        .max_age(3600)
        .block_on_origin_mismatch(false);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    actix_web::middleware::Condition::new(!origins.is_empty(), cors)
}

/// A CORS preflight that the CORS middleware refused (its answer is a bare
/// 400 text): answered again as the API's JSON error.
fn refused_preflight<B>(res: &actix_web::dev::ServiceResponse<B>) -> bool {
    let req = res.request();
    req.method() == actix_web::http::Method::OPTIONS
        && req.headers().contains_key("access-control-request-method")
        && res.status() == actix_web::http::StatusCode::BAD_REQUEST
        && !res.headers().contains_key(actix_web::http::header::CONTENT_TYPE)
}

fn has_encoded_control(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_uppercase()), (b'0' | b'1', _) | (b'7', b'F')))
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then(|| s.to_string())
}

/// The application: every route, the docs, the JSON error handlers, and the
/// request-id middleware that tags each response and log line.
pub fn build_app(
    state: web::Data<AppState>,
    verifier: web::Data<JwtVerifier>,
    metrics: Arc<crate::metrics::Metrics>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors_origins = state.ctx.settings.cors_origins.clone();
    App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .app_data(state)
        .app_data(verifier)
        .app_data(web::QueryConfig::default().error_handler(api::query_error))
        .app_data(web::PathConfig::default().error_handler(api::path_error))
        .configure(api::configure)
        .openapi_service(|mut doc| {
            api::docs::finish(&mut doc);
            SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", doc)
        })
        .into_app()
        .app_data(web::Data::new(api::RouteTable::from_doc(&api::docs::openapi())))
        .service(web::redirect("/docs", "/docs/"))
        .default_service(web::to(api::not_found))
        .wrap(cors(&cors_origins))
        .wrap_fn(move |req, srv| {
            let metrics = metrics.clone();
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(valid_request_id)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let span = tracing::info_span!(
                "request",
                request_id = %request_id,
                method = %req.method(),
                path = %req.path()
            );
            let started = Instant::now();
            // A control character in a path id can name nothing (and
            // PostgreSQL refuses NUL in text): answer 404 before routing. A
            // NUL in the query string is a 422, whichever field carries it.
            let refusal = if has_encoded_control(req.path()) {
                Some(crate::error::ApiError::not_found("not found"))
            } else if crate::domain::text::query_has_nul(req.query_string()) {
                Some(crate::error::ApiError::validation("the query string must not contain NUL (%00)"))
            } else {
                None
            };
            let call = match refusal {
                Some(error) => Err((req, error)),
                None => Ok(srv.call(req)),
            };
            let id = request_id.clone();
            REQUEST_ID
                .scope(
                    request_id,
                    async move {
                        let mut res = match call {
                            Ok(fut) => match fut.await? {
                                res if refused_preflight(&res) => {
                                    let error = crate::error::ApiError::bad_request(
                                        crate::error::ErrorCode::InvalidRequest,
                                        "CORS preflight refused: the origin is not in TALLY_CORS_ORIGINS, \
                                         or the method or a header is not allowed",
                                    );
                                    let (req, _) = res.into_parts();
                                    actix_web::dev::ServiceResponse::new(
                                        req,
                                        actix_web::ResponseError::error_response(&error),
                                    )
                                    .map_into_right_body()
                                }
                                res => res.map_into_left_body(),
                            },
                            Err((req, error)) => req
                                .into_response(actix_web::ResponseError::error_response(&error))
                                .map_into_right_body(),
                        };
                        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
                        let status = res.status().as_u16().to_string();
                        metrics
                            .http_requests
                            .with_label_values(&[
                                route.as_str(),
                                res.request().method().as_str(),
                                status.as_str(),
                            ])
                            .inc();
                        metrics
                            .http_latency
                            .with_label_values(&[route.as_str()])
                            .observe(started.elapsed().as_secs_f64());
                        if let Ok(v) = HeaderValue::from_str(&id) {
                            res.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
                        }
                        // The API key's id, never its secret.
                        let api_key = actix_web::HttpMessage::extensions(res.request())
                            .get::<crate::auth::ApiKeyUsed>()
                            .map(|k| k.0.clone());
                        tracing::info!(
                            status = res.status().as_u16(),
                            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                            api_key = api_key.as_deref(),
                            "served"
                        );
                        Ok(res)
                    }
                    .instrument(span),
                )
                .boxed_local()
        })
}
