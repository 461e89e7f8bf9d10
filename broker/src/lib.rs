//! therappai-broker: a local daemon that owns therappai refresh tokens in OS secure storage
//! and serves short-lived access tokens to allowed local programs over gRPC on a Unix socket.
//!
//! Modules in the order a request travels:
//! [`listener`] (with [`admission`]) → [`service`] → [`peer`] → [`policy`] → [`cache`] →
//! [`refresh`] → [`upstream`] → [`store`]; beside them [`session`] (login, logout, revoke,
//! restore, status), [`ratelimit`] (failed logins), [`secret`], [`config`] (with [`groups`]
//! and [`reload`]), [`audit`], [`paths`], [`clock`], [`jwt`], [`telemetry`], [`notify`]
//! (systemd readiness, status and watchdog), [`capability`], [`error`] and [`alloc`] (the
//! daemon's zeroizing allocator).

// The daemon reports through tracing (stderr/journald), never stdout.
#![deny(clippy::print_stdout)]

pub mod admission;
pub mod alloc;
pub mod audit;
pub mod authority;
pub mod cache;
pub mod capability;
pub mod clock;
pub mod config;
pub mod connection;
pub mod error;
pub mod file_trust;
// Forwarders for the fuzz targets in fuzz/ (the parsers they reach are private).
#[doc(hidden)]
pub mod fuzzing;
pub mod groups;
pub mod health;
pub mod jwt;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod peer;
pub mod policy;
pub mod ratelimit;
pub mod reflection;
pub mod refresh;
pub mod reload;
pub mod secret;
pub mod service;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod upstream;

use crate::cache::Cache;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::policy::{Policy, SharedPolicy};
use crate::ratelimit::SharedLimiter;
use crate::refresh::Refresher;
use crate::service::BrokerService;
use crate::session::Sessions;
use crate::store::StoreHandle;
use crate::upstream::Upstream;
use std::sync::Arc;
use therappai_broker_proto::v1::broker_server::BrokerServer;
use tokio_util::sync::CancellationToken;

/// Why the daemon could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The secure store could not be opened.
    #[error("cannot open the secure store: {0}")]
    Store(#[from] store::StoreError),
    /// The HTTPS client could not be built (e.g. a bad ca_file).
    #[error("{0}")]
    Upstream(String),
    /// The socket could not be set up.
    #[error(transparent)]
    Listener(#[from] listener::ListenerError),
    /// The reflection descriptors do not decode (a build bug).
    #[error("cannot set up server reflection: {0}")]
    Reflection(#[from] reflection::ReflectionError),
}

/// A started broker: store open, accounts restored, socket bound. Serving starts with
/// [`Daemon::serve`].
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    listening: listener::Listening,
    service: BrokerService,
    store_backend: String,
    /// Health and reflection, served beside the broker on the same socket.
    conventions: tonic::service::Routes,
}

impl Daemon {
    /// Opens the store, restores sessions and listens: on the socket systemd passed
    /// (`systemd_socket`, from [`listener::take_systemd_socket`]) or else on one it binds at
    /// `config.socket`. Must run inside a tokio runtime.
    pub async fn start(
        config: Config,
        systemd_socket: Option<std::os::unix::net::UnixListener>,
    ) -> Result<Self, StartError> {
        let store_config = config.store.clone();
        // Opening reads credentials and derives keys: wiped as after any store call.
        let store = tokio::task::spawn_blocking(move || {
            secret::deep_work_then_wipe(|| match store_config.backend {
                store::BackendChoice::Vault => store::open_vault(&store_config)
                    .map(|fleet| StoreHandle::fleet_store(Arc::new(fleet))),
                _ => store::open(&store_config).map(StoreHandle::new),
            })
        })
        .await
        .map_err(|e| StartError::Upstream(format!("store start-up task failed: {e}")))??;
        tracing::info!(backend = %store.backend(), detail = %store.describe(), "secure store ready");
        Self::start_on(config, store, Arc::new(SystemClock), systemd_socket).await
    }

    /// As [`Daemon::start`] with an injected store and clock, binding its own socket (tests).
    pub async fn start_with(
        config: Config,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        Self::start_on(config, store, clock, None).await
    }

    async fn start_on(
        config: Config,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        systemd_socket: Option<std::os::unix::net::UnixListener>,
    ) -> Result<Self, StartError> {
        let store_backend = store.backend().to_string();
        let account_names: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
        let metrics = Arc::new(metrics::Metrics::new(&account_names));
        let store = store
            .observed_by(Arc::clone(&metrics))
            .with_call_timeout(config.store.call_timeout);
        let upstream = Upstream::new(&config.upstream)
            .map_err(StartError::Upstream)?
            .with_metrics(Arc::clone(&metrics));
        let cache = Arc::new(Cache::new(&config.accounts));
        let sessions = Arc::new(Sessions::new(
            Arc::clone(&cache),
            upstream.clone(),
            store.clone(),
            Arc::clone(&clock),
            config.refresh.ahead_share,
        ));
        sessions.restore().await;
        let refresher = Arc::new(
            Refresher::new(upstream, store, Arc::clone(&clock), config.refresh.clone())
                .with_attempt_budget(config.upstream.request_timeout),
        );
        let login_limiter = Arc::new(SharedLimiter::new(
            config.login_limits.clone(),
            Arc::clone(&clock),
        ));
        let listening = match systemd_socket {
            Some(inherited) => listener::adopt(inherited)?,
            None => listener::bind(&config.socket, &config.socket_access)?,
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let broker_uid = unsafe { libc::geteuid() };
        capability::warn_about_missing_ptrace(&config.policy, broker_uid);
        let policy = Arc::new(SharedPolicy::new(Policy {
            broker_uid,
            rules: config.policy.clone(),
        }));
        let service = BrokerService {
            policy,
            audit: audit::Audit::default(),
            cache,
            refresher,
            sessions,
            login_limiter,
            clock,
            metrics: Arc::clone(&metrics),
            streams_stop: CancellationToken::new(),
        };
        let (reflection_v1, reflection_v1alpha) = reflection::services()?;
        let conventions = tonic::service::Routes::new(health::service(&metrics).await)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        Ok(Self {
            config,
            listening,
            service,
            store_backend,
            conventions,
        })
    }

    /// The socket being served (systemd's, or the one bound at `config.socket`).
    pub fn socket_path(&self) -> &std::path::Path {
        &self.listening.path
    }

    /// What computes the one-line `STATUS=` for systemd (also after a reload).
    pub fn status_line(&self) -> StatusLine {
        StatusLine {
            cache: Arc::clone(&self.service.cache),
            store: self.store_backend.clone(),
        }
    }

    /// What SIGHUP calls to re-read the policy rules from the config file.
    pub fn reloader(&self) -> reload::Reloader {
        reload::Reloader::new(self.config.clone(), Arc::clone(&self.service.policy))
    }

    /// Serves until `shutdown` fires, then lets in-flight calls finish for at most the
    /// configured grace period, and removes the socket.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), tonic::transport::Error> {
        let status = self.status_line();
        let Daemon {
            config,
            listening,
            service,
            store_backend,
            conventions,
        } = self;
        let listener::Listening {
            listener,
            path: socket,
            origin,
        } = listening;
        tracing::info!(socket = %socket.display(), from = ?origin, accounts = config.accounts.len(), "serving");
        let streams_stop = service.streams_stop.clone();
        // The listener is up and the store answered (start opened both).
        notify::ready(&status.current());
        tokio::spawn(notify::keep_status_current(
            Arc::clone(&service.cache),
            store_backend,
            shutdown.child_token(),
        ));
        // Pings go on through the drain, until serving returns.
        let watchdog_stop = CancellationToken::new();
        let _stop_watchdog = watchdog_stop.clone().drop_guard();
        if let Some(interval) = notify::watchdog_interval() {
            tracing::debug!(?interval, "systemd watchdog enabled");
            tokio::spawn(notify::watchdog(interval, watchdog_stop));
        }
        for slot in service.cache.slots() {
            tokio::spawn(refresh::run_background(
                Arc::clone(&service.refresher),
                Arc::clone(slot),
                Arc::clone(&service.clock),
                shutdown.child_token(),
            ));
            // Returns at once unless the store is a fleet's OpenBao.
            tokio::spawn(refresh::watch_fleet(
                Arc::clone(&service.refresher),
                Arc::clone(slot),
                shutdown.child_token(),
            ));
        }
        let refresher = Arc::clone(&service.refresher);
        let sessions = Arc::clone(&service.sessions);
        let cache = Arc::clone(&service.cache);
        let admission = admission::Admission::new(config.connection_limits.clone());
        let incoming = metrics::count_connections(
            listener::incoming(listener, admission),
            Arc::clone(&service.metrics),
        );
        let stop = shutdown.clone();
        // STOPPING=1 and the end of the session streams happen inside the server's own
        // shutdown future, so they are done before serving can return (a spawned task could
        // still be waiting for a worker when the process exits, and systemd would never hear).
        // Admission control (see `admission.rs`): what one caller can make the broker hold.
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(admission::MAX_STREAMS_PER_CONNECTION))
            .initial_stream_window_size(Some(admission::STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(admission::CONNECTION_WINDOW_BYTES))
            .http2_max_header_list_size(admission::MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(admission::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(admission::KEEPALIVE_TIMEOUT))
            .layer(admission::AdmissionLayer)
            .add_routes(conventions)
            .add_service(
                BrokerServer::new(service)
                    .max_decoding_message_size(admission::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(admission::MAX_RESPONSE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                stop.cancelled().await;
                notify::stopping();
                streams_stop.cancel();
            });
        tokio::pin!(server);
        // The server is bounded by the grace on its own: a connection that never speaks
        // HTTP/2 (or a call that never ends) holds its graceful shutdown open for ever.
        let result = tokio::select! {
            result = &mut server => result,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(config.shutdown_grace).await;
            } => {
                tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls or open connections did not finish within the grace period; no longer waiting for them (they close at exit)");
                Ok(())
            }
        };
        // Whatever way serving ended, the drain runs, with a budget of its own: a refresh
        // cycle in flight finishes (and stores a rotated token), and a rotated token that only
        // memory holds (a failed store write) gets one last try, or it is lost with the process.
        drain(&refresher, &sessions, &cache, config.shutdown_drain).await;
        listener::remove_socket(&socket, origin);
        tracing::info!("stopped");
        result
    }
}

/// The work that must outlive serving, bounded by `budget`: logouts and revokes in flight
/// (their store deletes), refresh cycles in flight, and the last store write of a rotated
/// token that only memory holds.
async fn drain(
    refresher: &Refresher,
    sessions: &Sessions,
    cache: &Cache,
    budget: std::time::Duration,
) {
    let drained = tokio::time::timeout(budget, async {
        sessions.finish_ends().await;
        refresher.finish_cycles().await;
        for slot in cache.slots() {
            refresher.retry_store_write(slot).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(budget = ?budget, "a logout, revoke, refresh cycle or store write did not finish within shutdown_drain_seconds; stopping anyway (a rotated token still in flight may be lost)");
    } else {
        tracing::debug!("drained: no logout, revoke, refresh cycle or store write left");
    }
}

/// Computes the one-line account summary systemd shows (`STATUS=`).
#[derive(Debug, Clone)]
pub struct StatusLine {
    cache: Arc<Cache>,
    store: String,
}

impl StatusLine {
    /// The summary now, e.g. `1 account: default active; store keyutils`.
    pub fn current(&self) -> String {
        notify::summary(&self.cache, &self.store)
    }
}
