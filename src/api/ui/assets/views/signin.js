// Sign-in: the admin token is sent once (POST /ui/signin, JSON); the server answers with an
// HttpOnly session cookie, so no script ever holds the token afterwards.

import { h, replace } from '../dom.js';
import { post } from '../api.js';

// Only a path of this explorer is a place to return to (no open redirect).
function nextPath(params) {
  const next = params.get('next') || '/ui/';
  return /^\/ui\/[^\\]*$/.test(next) && !next.startsWith('//') ? next : '/ui/';
}

export default function signin(main, { params }) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', required: true, autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'token-help',
  });
  const message = h('p', { class: 'form-message', role: 'alert', 'aria-live': 'assertive' });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', {
    class: 'signin',
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        submit.disabled = true;
        message.textContent = '';
        const r = await post('/ui/signin', { token: input.value });
        input.value = '';
        submit.disabled = false;
        if (r.status === 204) {
          location.assign(nextPath(params));
          return;
        }
        message.textContent = r.status === 429
          ? `Too many failed sign-ins. Try again in ${r.retryAfter || 'a few'} seconds.`
          : r.status === 401
            ? 'That is not the admin token.'
            : (r.body && r.body.error && r.body.error.message) || `Sign-in failed (HTTP ${r.status}).`;
        input.focus();
      },
    },
  },
  h('label', { for: 'token' }, 'Admin token'),
  input,
  h('p', { id: 'token-help', class: 'muted' }, 'admin.token or TRACE_PROXY_ADMIN_TOKEN of this trace-proxy. The session lasts admin.session_ttl and ends when you sign out or the token changes.'),
  submit,
  message);
  replace(main, h('h1', {}, 'Sign in'), form);
  input.focus();
}
