// What every script shares: the client as a user would make it, from the environment
// the Python test sets (OLB_HOST, OLB_KEY, OLB_MODEL), and one JSON line as the result.
import { Ollama } from 'ollama'

export const model = process.env.OLB_MODEL
export const messages = [{ role: 'user', content: 'why is the sky blue' }]

export function connect () {
  return new Ollama({
    host: process.env.OLB_HOST,
    headers: { Authorization: `Bearer ${process.env.OLB_KEY}` }
  })
}

export function report (result) {
  process.stdout.write(JSON.stringify(result) + '\n')
}

// A caught error as the user sees it: its class, the status (ResponseError) and message.
export function described (error) {
  return { name: error.name, status_code: error.status_code ?? null, message: error.message }
}
