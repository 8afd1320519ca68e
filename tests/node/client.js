// A second-language client: loads protos/ as they are and talks to the daemon's
// Unix socket. Usage: node client.js SOCKET get|watch CONNECTOR [RESOURCE_TYPE]
// Prints one JSON line per credential (watch: per event, stops after `count` events).
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [socket, action, connector, resourceType = "", count = "2"] = process.argv.slice(2);
const definition = loader.loadSync("broker/v1/broker.proto", {
  includeDirs: [path.resolve(__dirname, "../../protos")],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const broker = grpc.loadPackageDefinition(definition).broker.v1;
// Options for many watch streams on one connection (README "Many watch streams").
const client = new broker.BrokerService(`unix://${socket}`, grpc.credentials.createInsecure(), {
  "grpc.keepalive_time_ms": 30000,
  "grpc.keepalive_timeout_ms": 20000,
});
const request = { connector, resource_type: resourceType };

function summary(cred) {
  return {
    connector: cred.connector,
    connector_type: cred.connector_type,
    resource_id: cred.resource_id,
    expires_at: cred.expires_at ? Number(cred.expires_at.seconds) : null,
    config: cred.config,
  };
}

if (action === "get") {
  client.GetCredentials(request, (err, cred) => {
    if (err) {
      console.error(`error: ${err.code} ${err.details}`);
      process.exit(1);
    }
    console.log(JSON.stringify(summary(cred)));
    client.close();
  });
} else if (action === "watch") {
  let seen = 0;
  const stream = client.WatchCredentials(request);
  stream.on("data", (event) => {
    console.log(JSON.stringify({ kind: event.kind, credential: event.credential ? summary(event.credential) : null }));
    seen += 1;
    if (seen >= Number(count)) {
      stream.cancel();
      client.close();
    }
  });
  stream.on("error", (err) => {
    if (err.code !== grpc.status.CANCELLED) {
      console.error(`error: ${err.code} ${err.details}`);
      process.exit(1);
    }
  });
} else {
  console.error("usage: node client.js SOCKET get|watch CONNECTOR [RESOURCE_TYPE] [COUNT]");
  process.exit(2);
}
