//! Attribute names: the OpenTelemetry semantic conventions the spans and resources follow
//! (HTTP, RPC, network, k8s, process, container), then the tracer's own (`tracer.*`). The
//! plugin host's `tracer.plugins.chain` is [`crate::plugins::CHAIN_ATTRIBUTE`].

// Spans: HTTP.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
pub const HTTP_REQUEST_BODY_SIZE: &str = "http.request.body.size";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const HTTP_RESPONSE_BODY_SIZE: &str = "http.response.body.size";
pub const HTTP_ROUTE: &str = "http.route";
pub const URL_PATH: &str = "url.path";
pub const URL_QUERY: &str = "url.query";
pub const URL_SCHEME: &str = "url.scheme";
pub const URL_FULL: &str = "url.full";
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
pub const ERROR_TYPE: &str = "error.type";

// Spans: the two ends.
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";

// Spans: gRPC.
pub const RPC_SYSTEM: &str = "rpc.system";
pub const RPC_SERVICE: &str = "rpc.service";
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

// Resources: the process and where it runs.
pub const SERVICE_NAME: &str = "service.name";
pub const PROCESS_PID: &str = "process.pid";
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
pub const PROCESS_COMMAND_ARGS: &str = "process.command_args";
pub const HOST_NAME: &str = "host.name";
pub const CONTAINER_ID: &str = "container.id";
pub const CONTAINER_RUNTIME_NAME: &str = "container.runtime.name";
pub const K8S_POD_NAME: &str = "k8s.pod.name";
pub const K8S_POD_UID: &str = "k8s.pod.uid";
pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
pub const K8S_NODE_NAME: &str = "k8s.node.name";
pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
pub const K8S_DAEMONSET_NAME: &str = "k8s.daemonset.name";
pub const K8S_JOB_NAME: &str = "k8s.job.name";
pub const K8S_CRONJOB_NAME: &str = "k8s.cronjob.name";

// The tracer's own: what it could not see exactly.
/// The response's end (and body size) are estimates: its framing was lost.
pub const TRACER_HTTP_RESPONSE_END_ESTIMATED: &str = "tracer.http.response_end_estimated";
/// An HTTP/1 head was longer than the capture.
pub const TRACER_HTTP_HEADERS_TRUNCATED: &str = "tracer.http.headers_truncated";
/// An HTTP/2 header block could not be decoded whole.
pub const TRACER_HTTP_HEADERS_INCOMPLETE: &str = "tracer.http.headers_incomplete";
