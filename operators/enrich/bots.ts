import { isbot } from 'isbot'

/**
 * Whether a user agent belongs to a crawler, spider, headless browser or HTTP
 * library (isbot's list). A missing or blank user agent is not a bot: messages
 * from server-side SDKs carry no user agent at all, and flagging every one of
 * them would drop real users' server events from the counts.
 */
export function isBotAgent(userAgent: string | undefined): boolean {
  if (userAgent === undefined || isBlank(userAgent)) return false
  return isbot(userAgent)
}

/** True for '' and for strings of spaces/tabs only; avoids allocating a trimmed copy. */
function isBlank(text: string): boolean {
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index)
    if (code !== 0x20 && code !== 0x09 && code !== 0x0a && code !== 0x0d) return false
  }
  return true
}
