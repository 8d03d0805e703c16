// Starts Bluesky's reference PDS (with an in-memory PLC) on 127.0.0.1 for siar's end-to-end test.
// Prints one JSON line: {"url", "did", "handle", "password", "app_password"}, then runs until
// stdin closes or it gets SIGTERM/SIGINT, and shuts down cleanly.
import { TestNetworkNoAppView } from '@atproto/dev-env'

const started = Date.now()
const network = await TestNetworkNoAppView.create({})
const url = `http://127.0.0.1:${network.pds.port}`
const agent = network.pds.getAgent()
const handle = 'siar.test'
const password = 'siar-test-password'
const account = await agent.api.com.atproto.server.createAccount({
  handle, email: 'siar@example.test', password,
})
await agent.login({ identifier: handle, password })
const appPassword = await agent.api.com.atproto.server.createAppPassword({ name: 'siar' })
process.stdout.write(JSON.stringify({
  url, did: account.data.did, handle, password, app_password: appPassword.data.password,
  start_ms: Date.now() - started,
}) + '\n')

let closing = false
async function shutdown () {
  if (closing) return
  closing = true
  try { await network.close() } finally { process.exit(0) }
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
process.stdin.on('end', shutdown)
process.stdin.on('close', shutdown)
process.stdin.resume()
