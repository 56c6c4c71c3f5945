//! The subcommands' side of a running tracer's admin endpoint (`--admin-addr`).
use std::time::Duration;

use super::CliError;

/// How long a subcommand waits for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on the admin endpoint at `addr` (HOST:PORT); the body of a successful answer.
pub async fn get(addr: &str, path: &str) -> Result<String, CliError> {
    request(reqwest::Method::GET, addr, path).await
}

/// `POST path`: the daemon's answer, or its refusal in its own words.
pub async fn post(addr: &str, path: &str) -> Result<String, CliError> {
    request(reqwest::Method::POST, addr, path).await
}

async fn request(method: reqwest::Method, addr: &str, path: &str) -> Result<String, CliError> {
    let unreachable = |source| CliError::AdminUnreachable {
        addr: addr.to_owned(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let resp = client
        .request(method, format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        let message = resp.text().await.map_err(unreachable)?;
        return Err(CliError::AdminRefused {
            message: message.trim_end().to_owned(),
        });
    }
    if !status.is_success() {
        return Err(CliError::AdminAnswer {
            addr: addr.to_owned(),
            status,
            source: None,
        });
    }
    resp.text().await.map_err(unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin;

    /// The admin endpoint of a daemon with no plugins, on a free port.
    async fn endpoint() -> String {
        let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(admin::serve(listener, crate::testing::admin_state()));
        addr
    }

    #[tokio::test]
    async fn gets_the_body_of_a_route_and_refuses_other_answers() {
        let addr = endpoint().await;
        let body = get(&addr, "/plugins").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["chain"]["version"], 0);
        match get(&addr, "/nothing").await {
            Err(e @ CliError::AdminAnswer { .. }) => assert_eq!(
                e.to_string(),
                format!("unexpected answer from {addr}: 404 Not Found")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn says_when_no_tracer_answers() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        match get(&addr, "/plugins").await {
            Err(e @ CliError::AdminUnreachable { .. }) => assert_eq!(
                e.to_string(),
                format!("no tracer answers on {addr}: is it running, with this --admin-addr?")
            ),
            other => panic!("{other:?}"),
        }
    }
}
