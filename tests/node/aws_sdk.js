// The AWS SDK for JavaScript v3, unmodified: STS GetCallerIdentity with the SDK's own
// default credential chain (container endpoint from AWS_CONTAINER_CREDENTIALS_FULL_URI,
// or credential_process from the profile in AWS_CONFIG_FILE / AWS_PROFILE), then a
// forced refresh of the credentials and a second call.
// Usage: node aws_sdk.js ENDPOINT_URL REGION
// Prints one JSON line: both callers' ARNs and a summary of both credentials (the
// secret only as a SHA-256, so a test can tell it from the stored one).
"use strict";
const crypto = require("crypto");
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");
const { fromNodeProviderChain } = require("@aws-sdk/credential-providers");

const [endpoint, region] = process.argv.slice(2);

function summary(creds) {
  return {
    accessKeyId: creds.accessKeyId,
    secretSha256: crypto.createHash("sha256").update(creds.secretAccessKey).digest("hex"),
    sessionToken: creds.sessionToken || null,
    expiration: creds.expiration ? creds.expiration.toISOString() : null,
  };
}

async function main() {
  const credentials = fromNodeProviderChain();
  const client = new STSClient({ endpoint, region, credentials });
  const first = await credentials();
  const before = await client.send(new GetCallerIdentityCommand({}));
  const refreshed = await credentials({ forceRefresh: true });
  const after = await client.send(new GetCallerIdentityCommand({}));
  console.log(
    JSON.stringify({
      arn: before.Arn,
      arnAfterRefresh: after.Arn,
      first: summary(first),
      refreshed: summary(refreshed),
    }),
  );
}

main().catch((err) => {
  console.error(`error: ${err.name}: ${err.message}`);
  process.exit(1);
});
