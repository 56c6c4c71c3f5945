// An event-loop frontend for the trace-join tests: one thread serves every request at once.
//
//     node chain_frontend.js PORT BACKEND_PORT
//
// GET /front/<id> calls GET /back/<id> on the backend (a keep-alive agent), then answers with
// its body.
const http = require("http");

const [port, backend] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

http
  .createServer((req, res) => {
    const id = req.url.split("/").pop();
    http
      .get({ host: "127.0.0.1", port: backend, path: "/back/" + id, agent }, (up) => {
        const chunks = [];
        up.on("data", (c) => chunks.push(c));
        up.on("end", () => {
          const body = Buffer.concat(chunks);
          res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": body.length });
          res.end(body);
        });
      })
      .on("error", (e) => {
        res.writeHead(502);
        res.end(String(e));
      });
  })
  .listen(port, "127.0.0.1");
