// A gRPC reflection client that speaks grpc.reflection.v1 only (the official v1 proto
// as @grpc/reflection ships it; no fallback to v1alpha). Asks the daemon for its
// services, then for the file declaring each symbol given.
// Usage: node reflection_v1.js SOCKET SYMBOL...
// Prints one JSON line: {services: [...], files: {SYMBOL: [file names] | "error: ..."}}.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const descriptor = require("protobufjs/ext/descriptor");

const [socket, ...symbols] = process.argv.slice(2);
const protoDir = path.join(path.dirname(require.resolve("@grpc/reflection/package.json")), "build", "proto");
const definition = loader.loadSync("grpc/reflection/v1/reflection.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).grpc.reflection.v1;
const client = new v1.ServerReflection(`unix://${socket}`, grpc.credentials.createInsecure());

const requests = [{ list_services: "" }, ...symbols.map((s) => ({ file_containing_symbol: s }))];
const out = { services: [], files: {} };
let index = 0;
const call = client.ServerReflectionInfo();
call.on("data", (response) => {
  const request = requests[index];
  index += 1;
  if (response.error_response) {
    const key = request.file_containing_symbol || "list_services";
    out.files[key] = `error: ${response.error_response.error_code} ${response.error_response.error_message}`;
  } else if (response.list_services_response) {
    out.services = response.list_services_response.service.map((s) => s.name).sort();
  } else if (response.file_descriptor_response) {
    out.files[request.file_containing_symbol] = response.file_descriptor_response.file_descriptor_proto.map(
      (bytes) => descriptor.FileDescriptorProto.decode(bytes).name,
    );
  }
  if (index === requests.length) {
    call.end();
  }
});
call.on("error", (err) => {
  console.error(`error: ${err.code} ${err.details}`);
  process.exit(1);
});
call.on("end", () => {
  console.log(JSON.stringify(out));
  client.close();
});
for (const request of requests) {
  call.write(request);
}
