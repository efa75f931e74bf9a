// Every read of the page goes through get(): GET /api/... with the session cookie. The raw body
// is kept, so "copy as JSON" hands over exactly what the API answered.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const enc = encodeURIComponent;

// A query string of the non-empty values, in the order given ("" when none).
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') u.set(k, String(v));
  }
  const s = u.toString();
  return s ? `?${s}` : '';
}

// Back to the sign-in page, returning here afterwards. The URL holds filters, never payloads.
export function signInAgain() {
  location.assign(`/ui/signin${qs({ next: location.pathname + location.search })}`);
}

export async function get(path) {
  const resp = await fetch(path, {
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { accept: 'application/json' },
  });
  const text = await resp.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (resp.status === 401) {
    signInAgain();
    throw new ApiError(401, 'UNAUTHORIZED', 'Signed out: the session ended or the token changed.');
  }
  if (!resp.ok) {
    const e = body && body.error ? body.error : {};
    throw new ApiError(resp.status, e.code || `HTTP_${resp.status}`, e.message || `HTTP ${resp.status}`);
  }
  return { path, body, text, date: resp.headers.get('date') };
}

export async function post(path, json) {
  const resp = await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { 'content-type': 'application/json' },
    body: json === undefined ? '{}' : JSON.stringify(json),
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  return { status: resp.status, body, retryAfter: resp.headers.get('retry-after') };
}
