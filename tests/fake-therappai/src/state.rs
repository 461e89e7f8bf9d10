//! Everything the fake remembers: users, issued tokens, the blacklist, the counters tests
//! read, and the knobs tests turn. One mutex per concern; none is held across an `.await`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::echo::EchoShape;
use crate::jwt::{Claims, Signer, TokenType};

/// Locks a mutex, shrugging off poisoning: a panicking test thread must not turn every
/// later request into a second panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A snapshot of what the fake has seen. Every counter is bumped before the response is
/// sent, so a test that reads them after getting a response sees its own call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Every HTTP request, whatever its path or outcome.
    pub total_requests: u64,
    /// Every `POST /login/`, including rejected, fault-injected and "down" ones (this and
    /// the other `*_calls` count every request to the path, whatever its method).
    pub login_calls: u64,
    /// Logins that returned a token pair.
    pub login_ok: u64,
    /// Logins rejected with 401 (wrong e-mail or password).
    pub login_failed: u64,
    /// Logins that carried an `Authorization` header (answered 400).
    pub login_with_authorization_header: u64,
    /// Every `POST /refresh/`, including rejected, delayed and fault-injected ones.
    pub refresh_calls: u64,
    /// Refreshes that minted a new access token.
    pub refresh_ok: u64,
    /// Refreshes answered 401 `token_not_valid`.
    pub refresh_rejected: u64,
    /// Every `POST /token/blacklist/` (even while the path is disabled and answers 404).
    pub blacklist_calls: u64,
    /// Blacklist calls that blacklisted a token.
    pub blacklist_ok: u64,
    /// Blacklist calls being handled right now (from arrival, through the delay, to the answer).
    pub blacklist_in_flight: u64,
    /// The most blacklist calls that were ever in flight at once.
    pub blacklist_max_in_flight: u64,
    /// Every `GET /me/`.
    pub me_calls: u64,
    /// `GET /me/` calls with a valid access token.
    pub me_ok: u64,
    /// `GET /me/` calls answered 401.
    pub me_rejected: u64,
    /// Requests whose URL carried something that looks like a token (answered 400).
    pub requests_with_token_in_url: u64,
    /// Answers scripted by a knob instead of the normal logic (fail_next, down,
    /// malformed or empty refresh answers, disconnects).
    pub faults_injected: u64,
    /// 400/415 answers for bad bodies (missing fields, invalid JSON, wrong content type).
    pub bad_requests: u64,
}

/// Which endpoint a scripted fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /login/`
    Login,
    /// `POST /refresh/`
    Refresh,
    /// `POST /token/blacklist/`
    Blacklist,
    /// `GET /me/`
    Me,
}

/// One scripted failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer with this status (and optionally a `Retry-After` in whole seconds).
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Close the connection without answering.
    Disconnect,
    /// Answer with a 3xx `status` and this `Location`.
    Redirect { status: u16, location: Arc<str> },
    /// Answer `200` with a body of `bytes` spaces, streamed without a `Content-Length`.
    HugeBody { bytes: usize },
    /// Answer `200` headers at once, then one byte of body every 200 ms, forever.
    Trickle,
}

#[derive(Debug)]
pub(crate) struct KnobState {
    pub(crate) access_lifetime: Duration,
    pub(crate) refresh_lifetime: Duration,
    pub(crate) rotate: bool,
    pub(crate) down: bool,
    pub(crate) refresh_delay: Duration,
    pub(crate) refresh_reply_delay: Duration,
    pub(crate) blacklist_delay: Duration,
    pub(crate) malformed_refresh: bool,
    pub(crate) refresh_missing_access: bool,
    pub(crate) revoke_path_enabled: bool,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    /// Error answers that echo the request's secret field, applied once its body is read.
    echoes: HashMap<Endpoint, VecDeque<(u16, EchoShape)>>,
}

/// A shared handle to change the fake's behaviour while it runs. Cheap to clone; every
/// clone controls the same server. Changes apply to requests that arrive afterwards.
#[derive(Debug, Clone)]
pub struct Knobs {
    inner: Arc<Mutex<KnobState>>,
}

impl Knobs {
    pub(crate) fn new(access_lifetime: Duration, refresh_lifetime: Duration, rotate: bool) -> Self {
        Self {
            inner: Arc::new(Mutex::new(KnobState {
                access_lifetime,
                refresh_lifetime,
                rotate,
                down: false,
                refresh_delay: Duration::ZERO,
                refresh_reply_delay: Duration::ZERO,
                blacklist_delay: Duration::ZERO,
                malformed_refresh: false,
                refresh_missing_access: false,
                revoke_path_enabled: true,
                faults: HashMap::new(),
                echoes: HashMap::new(),
            })),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, KnobState> {
        lock(&self.inner)
    }

    /// Pops the next scripted fault for `endpoint`, if any.
    pub(crate) fn take_fault(&self, endpoint: Endpoint) -> Option<Fault> {
        self.state().faults.get_mut(&endpoint)?.pop_front()
    }

    fn push_faults(&self, endpoint: Endpoint, count: usize, fault: Fault) {
        let mut state = self.state();
        let queue = state.faults.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(fault, count));
    }

    /// Lifetime of access tokens minted from now on (`exp` is whole seconds, so a token
    /// minted late in a second lives up to one second less).
    pub fn set_access_lifetime(&self, lifetime: Duration) {
        self.state().access_lifetime = lifetime;
    }

    /// Lifetime of refresh tokens minted from now on.
    pub fn set_refresh_lifetime(&self, lifetime: Duration) {
        self.state().refresh_lifetime = lifetime;
    }

    /// Refresh-token rotation: `/refresh/` also returns a new `refresh` and blacklists the
    /// submitted one.
    pub fn set_rotation(&self, rotate: bool) {
        self.state().rotate = rotate;
    }

    /// While down, every request is answered `503` with `Retry-After: 1`.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Answers the next `count` requests to `endpoint` with `status` and a JSON `detail`.
    pub fn fail_next(&self, endpoint: Endpoint, count: usize, status: u16) {
        self.push_faults(
            endpoint,
            count,
            Fault::Status {
                status,
                retry_after: None,
            },
        );
    }

    /// Like [`Knobs::fail_next`], with a `Retry-After` header (whole seconds, rounded up).
    pub fn fail_next_with_retry_after(
        &self,
        endpoint: Endpoint,
        count: usize,
        status: u16,
        retry_after: Duration,
    ) {
        self.push_faults(
            endpoint,
            count,
            Fault::Status {
                status,
                retry_after: Some(retry_after),
            },
        );
    }

    /// Closes the connection instead of answering the next `count` requests to `endpoint`
    /// (the client sees a transport error).
    pub fn disconnect_next(&self, endpoint: Endpoint, count: usize) {
        self.push_faults(endpoint, count, Fault::Disconnect);
    }

    /// Forgets every scripted fault that has not fired yet.
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.echoes.clear();
    }

    /// Answers the next `count` requests to `endpoint` (login, refresh or blacklist) with
    /// `status` and a body that echoes the secret the request carried (the refresh token, or
    /// the password on login), in `shape`. The token is not consumed.
    pub fn echo_next(&self, endpoint: Endpoint, count: usize, status: u16, shape: EchoShape) {
        let mut state = self.state();
        let queue = state.echoes.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n((status, shape), count));
    }

    /// Pops the next echo answer for `endpoint`, if any.
    pub(crate) fn take_echo(&self, endpoint: Endpoint) -> Option<(u16, EchoShape)> {
        self.state().echoes.get_mut(&endpoint)?.pop_front()
    }

    /// Holds every `/refresh/` request this long before handling it (the call is counted
    /// in `refresh_calls` on arrival, so tests can see it is in flight).
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.state().refresh_delay = delay;
    }

    /// Handles every successful `/refresh/` at once (the old refresh token is blacklisted when
    /// rotating, and `refresh_ok` counts it) but holds the answer this long: the window in
    /// which a crashed client has lost a rotation the server already made (SimpleJWT's order).
    pub fn set_refresh_reply_delay(&self, delay: Duration) {
        self.state().refresh_reply_delay = delay;
    }

    /// Holds every blacklist (revocation) request this long before handling it (counted in
    /// `blacklist_calls` on arrival): a slow therappai behind a logout or revoke.
    pub fn set_blacklist_delay(&self, delay: Duration) {
        self.state().blacklist_delay = delay;
    }

    /// `/refresh/` answers `200` with a body that is not JSON. The token is not consumed.
    pub fn set_malformed_refresh(&self, on: bool) {
        self.state().malformed_refresh = on;
    }

    /// `/refresh/` answers `200 {}`. The token is not consumed.
    pub fn set_refresh_missing_access(&self, on: bool) {
        self.state().refresh_missing_access = on;
    }

    /// When disabled, the blacklist path answers `404` like a deployment without it.
    pub fn set_revoke_path_enabled(&self, on: bool) {
        self.state().revoke_path_enabled = on;
    }

    // --- Hostile network answers (redirects, huge and endless bodies) ---

    /// Answers the next `count` requests to `endpoint` with a 3xx `status` and `Location:
    /// location` (the token is not consumed).
    pub fn redirect_next(&self, endpoint: Endpoint, count: usize, status: u16, location: &str) {
        self.push_faults(
            endpoint,
            count,
            Fault::Redirect {
                status,
                location: Arc::from(location),
            },
        );
    }

    /// Answers the next `count` requests to `endpoint` with `200` and a body of `bytes`
    /// bytes, streamed as fast as the client reads, with no `Content-Length` announcing it.
    pub fn huge_body_next(&self, endpoint: Endpoint, count: usize, bytes: usize) {
        self.push_faults(endpoint, count, Fault::HugeBody { bytes });
    }

    /// Answers the next `count` requests to `endpoint` with `200` headers, then trickles the
    /// body one byte every 200 ms and never ends it.
    pub fn trickle_next(&self, endpoint: Endpoint, count: usize) {
        self.push_faults(endpoint, count, Fault::Trickle);
    }
}

/// Why a refresh token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshRefused {
    Invalid,
    Blacklisted,
}

/// Users, issued tokens and the blacklist.
#[derive(Debug, Default)]
struct Registry {
    /// Every token ever issued, in order.
    issued: Vec<String>,
    /// jti of every refresh token ever issued, by token.
    refresh_jti: HashMap<String, String>,
    /// Blacklisted refresh-token jtis.
    blacklist: HashSet<String>,
}

/// A pair from a successful login or refresh.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) access: String,
    pub(crate) refresh: Option<String>,
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    signer: Signer,
    users: Vec<(String, String)>,
    registry: Mutex<Registry>,
    counters: Mutex<Counters>,
    pub(crate) knobs: Knobs,
}

impl Shared {
    pub(crate) fn new(users: Vec<(String, String)>, knobs: Knobs) -> Self {
        Self {
            signer: Signer::random(),
            users,
            registry: Mutex::new(Registry::default()),
            counters: Mutex::new(Counters::default()),
            knobs,
        }
    }

    pub(crate) fn count(&self, bump: impl FnOnce(&mut Counters)) {
        bump(&mut lock(&self.counters));
    }

    pub(crate) fn counters(&self) -> Counters {
        *lock(&self.counters)
    }

    /// The 1-based user id for matching credentials.
    pub(crate) fn authenticate(&self, email: &str, password: &str) -> Option<u64> {
        let index = self
            .users
            .iter()
            .position(|(e, p)| e == email && p == password)?;
        u64::try_from(index + 1).ok()
    }

    pub(crate) fn email_of(&self, user_id: u64) -> Option<&str> {
        let index = usize::try_from(user_id).ok()?.checked_sub(1)?;
        self.users.get(index).map(|(e, _)| e.as_str())
    }

    fn lifetimes(&self) -> (Duration, Duration, bool) {
        let knobs = self.knobs.state();
        (knobs.access_lifetime, knobs.refresh_lifetime, knobs.rotate)
    }

    fn mint_refresh(&self, registry: &mut Registry, user_id: u64, lifetime: Duration) -> String {
        let (token, claims) = self.signer.mint(TokenType::Refresh, user_id, lifetime);
        registry.issued.push(token.clone());
        registry.refresh_jti.insert(token.clone(), claims.jti);
        token
    }

    fn mint_access(&self, registry: &mut Registry, user_id: u64, lifetime: Duration) -> String {
        let (token, _) = self.signer.mint(TokenType::Access, user_id, lifetime);
        registry.issued.push(token.clone());
        token
    }

    /// A fresh access + refresh pair for a user who just logged in.
    pub(crate) fn login(&self, user_id: u64) -> Issued {
        let (access_life, refresh_life, _) = self.lifetimes();
        let mut registry = lock(&self.registry);
        let refresh = self.mint_refresh(&mut registry, user_id, refresh_life);
        let access = self.mint_access(&mut registry, user_id, access_life);
        Issued {
            access,
            refresh: Some(refresh),
        }
    }

    /// Verifies a refresh token and checks it against the blacklist.
    fn check_refresh(&self, registry: &Registry, token: &str) -> Result<Claims, RefreshRefused> {
        let claims = self
            .signer
            .verify(token, TokenType::Refresh)
            .map_err(|_| RefreshRefused::Invalid)?;
        if registry.blacklist.contains(&claims.jti) {
            return Err(RefreshRefused::Blacklisted);
        }
        Ok(claims)
    }

    /// SimpleJWT's refresh: a new access token; with rotation also a new refresh token,
    /// and the submitted one is blacklisted. Check and blacklist happen under one lock, so
    /// of two concurrent refreshes with the same token only one wins.
    pub(crate) fn refresh(&self, token: &str) -> Result<Issued, RefreshRefused> {
        let (access_life, refresh_life, rotate) = self.lifetimes();
        let mut registry = lock(&self.registry);
        let claims = self.check_refresh(&registry, token)?;
        let refresh = if rotate {
            registry.blacklist.insert(claims.jti);
            Some(self.mint_refresh(&mut registry, claims.user_id, refresh_life))
        } else {
            None
        };
        let access = self.mint_access(&mut registry, claims.user_id, access_life);
        Ok(Issued { access, refresh })
    }

    /// Blacklists a valid refresh token (SimpleJWT's TokenBlacklistView).
    pub(crate) fn blacklist(&self, token: &str) -> Result<(), RefreshRefused> {
        let mut registry = lock(&self.registry);
        let claims = self.check_refresh(&registry, token)?;
        registry.blacklist.insert(claims.jti);
        Ok(())
    }

    /// The user id of a valid, unexpired access token.
    pub(crate) fn check_access(&self, token: &str) -> Option<u64> {
        self.signer
            .verify(token, TokenType::Access)
            .ok()
            .map(|c| c.user_id)
    }

    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        lock(&self.registry).issued.clone()
    }

    pub(crate) fn revoke_all_refresh_tokens(&self) {
        let mut registry = lock(&self.registry);
        let jtis: Vec<String> = registry.refresh_jti.values().cloned().collect();
        registry.blacklist.extend(jtis);
    }

    pub(crate) fn is_refresh_blacklisted(&self, token: &str) -> bool {
        let registry = lock(&self.registry);
        registry
            .refresh_jti
            .get(token)
            .is_some_and(|jti| registry.blacklist.contains(jti))
    }
}
