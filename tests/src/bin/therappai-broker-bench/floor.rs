//! The floor: a bare tonic server on a Unix socket whose GetAccessToken returns a token-sized
//! string and does nothing else. It runs as a child process (this binary, `floor-server`), so
//! it pays the same process and socket costs as the daemon, on a runtime built the same way.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use therappai_broker_e2e::wait_until;
use therappai_broker_proto::v1 as pb;
use therappai_broker_proto::v1::broker_server::{Broker, BrokerServer};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// A SimpleJWT access token is about this long.
pub const TOKEN_LEN: usize = 330;

#[derive(Debug)]
struct Floor {
    token: String,
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Broker for Floor {
    async fn get_access_token(
        &self,
        _: Request<pb::GetAccessTokenRequest>,
    ) -> Reply<pb::GetAccessTokenResponse> {
        Ok(Response::new(pb::GetAccessTokenResponse {
            access_token: self.token.clone(),
            expires_at_unix: 2_000_000_000,
            fingerprint: "00000000".to_owned(),
        }))
    }
    async fn report_rejected(
        &self,
        _: Request<pb::ReportRejectedRequest>,
    ) -> Reply<pb::GetAccessTokenResponse> {
        Err(Status::unimplemented("floor"))
    }
    type WatchSessionStream = tokio_stream::Empty<Result<pb::SessionEvent, Status>>;
    async fn watch_session(
        &self,
        _: Request<pb::WatchSessionRequest>,
    ) -> Reply<Self::WatchSessionStream> {
        Err(Status::unimplemented("floor"))
    }
    async fn login(&self, _: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        Err(Status::unimplemented("floor"))
    }
    async fn logout(&self, _: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        Err(Status::unimplemented("floor"))
    }
    async fn logout_device(
        &self,
        _: Request<pb::LogoutDeviceRequest>,
    ) -> Reply<pb::LogoutDeviceResponse> {
        Err(Status::unimplemented("floor"))
    }
    async fn revoke(&self, _: Request<pb::RevokeRequest>) -> Reply<pb::RevokeResponse> {
        Err(Status::unimplemented("floor"))
    }
    async fn status(&self, _: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        Err(Status::unimplemented("floor"))
    }
    async fn get_metrics(
        &self,
        _: Request<pb::GetMetricsRequest>,
    ) -> Reply<pb::GetMetricsResponse> {
        Err(Status::unimplemented("floor"))
    }
}

/// `floor-server SOCKET`: serves until killed. Same runtime shape as the daemon's.
pub fn serve(socket: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)?;
        let service = Floor {
            token: "x".repeat(TOKEN_LEN),
        };
        tonic::transport::Server::builder()
            .add_service(BrokerServer::new(service))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await?;
        Ok(())
    })
}

/// The floor server as a child process, killed on drop.
#[derive(Debug)]
pub struct FloorProcess {
    pub child: Child,
}

impl FloorProcess {
    pub fn start(socket: &Path) -> anyhow::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .arg("floor-server")
            .arg(socket)
            .stdin(Stdio::null())
            .spawn()?;
        wait_until(
            "the floor server to listen",
            Duration::from_secs(20),
            || std::os::unix::net::UnixStream::connect(socket).is_ok(),
        );
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
