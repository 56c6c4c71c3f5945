//! A containerized process's spans carry its container id. No container engine runs on our
//! machines, so the test makes what an engine makes: a cgroup named the way docker names it,
//! with the server process moved into it. The tracer only ever sees /proc/PID/cgroup.
use std::{fs, path::PathBuf, time::Duration};

use tracer_tests::*;

/// A cgroup shaped like a docker container's, removed on drop (after its process is gone).
struct FakeContainer {
    dir: PathBuf,
}

impl FakeContainer {
    /// Under the cgroup v2 hierarchy when one is mounted, else under the v1 `pids` controller.
    fn create(id: &str) -> Option<FakeContainer> {
        let candidates = [
            PathBuf::from(format!("/sys/fs/cgroup/system.slice/docker-{id}.scope")),
            PathBuf::from(format!(
                "/sys/fs/cgroup/unified/system.slice/docker-{id}.scope"
            )),
            PathBuf::from(format!("/sys/fs/cgroup/pids/docker/{id}")),
        ];
        candidates.into_iter().find_map(|dir| {
            let parent = dir.parent()?;
            let root_ok = parent.parent()?.join("cgroup.procs").exists();
            if !root_ok {
                return None;
            }
            fs::create_dir_all(&dir).ok()?;
            Some(FakeContainer { dir })
        })
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // rmdir fails while a process is still inside: wait for the server to be gone.
        wait_until(Duration::from_secs(5), || fs::remove_dir(&self.dir).is_ok());
    }
}

#[test]
fn spans_of_a_containerized_process_carry_its_container_id() {
    let Some(_g) = setup_with_curl() else { return };
    let id = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";
    let Some(container) = FakeContainer::create(id) else {
        require("a writable cgroup hierarchy to fake a container in", false);
        return;
    };
    {
        let server = Server::test_server();
        container.add(server.pid());
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).unwrap();
        assert!(cgroup.contains(id), "{cgroup}");

        let tracer = Tracer::start(&["--port", &server.port().to_string()]);
        curl(&[&server.url("/status/200")]);
        let spans = tracer.stop();
        let servers = of_kind_pid(&spans, "SERVER", server.pid());
        assert_eq!(servers.len(), 1, "{}", pretty(&servers));
        assert_eq!(servers[0]["resource"]["container.id"], id, "{}", servers[0]);
        // curl runs on the host: no container id.
        let clients = of_kind(&spans, "CLIENT");
        assert_eq!(clients.len(), 1);
        assert!(
            clients[0]["resource"].get("container.id").is_none(),
            "{}",
            clients[0]
        );
    }
    drop(container);
}
