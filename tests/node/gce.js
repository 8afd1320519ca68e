// Google's official Node.js client (google-auth-library, with its gcp-metadata) against
// the broker's GCE metadata endpoint, configured only by the variables `broker env gcp`
// prints. Usage: node gce.js AUDIENCE SCOPE
// Prints one JSON object: what the library detected and fetched.
"use strict";
const { Compute, GoogleAuth } = require("google-auth-library");
const gcpMetadata = require("gcp-metadata");

async function main() {
  const [audience, scope] = process.argv.slice(2);
  const available = await gcpMetadata.isAvailable(); // probes `instance`, checks the header
  const auth = new GoogleAuth();
  const client = await auth.getClient(); // a Compute client when a metadata server answers
  const { token } = await client.getAccessToken();
  const scoped = new Compute({ scopes: [scope] }); // ?scopes=SCOPE
  const scopedToken = (await scoped.getAccessToken()).token;
  const credentials = await auth.getCredentials(); // service-accounts/default/email
  const idClient = await auth.getIdTokenClient(audience); // .../identity?format=full&audience=
  const idToken = await idClient.idTokenProvider.fetchIdToken(audience);
  console.log(
    JSON.stringify({
      available,
      client: client.constructor.name,
      token,
      scopedToken,
      email: credentials.client_email,
      // getProjectId() would try `gcloud config config-helper` first (seconds); this is
      // its metadata-server step.
      project: await auth.getGCEProjectId(),
      metadataProject: await gcpMetadata.project("project-id"),
      numericProject: String(await gcpMetadata.project("numeric-project-id")),
      universe: await auth.getUniverseDomain(),
      idToken,
    }),
  );
}

main().catch((err) => {
  console.error(`error: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
