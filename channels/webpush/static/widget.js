/* siar notification prompt for the site's own pages:
 *   <script src="https://www.example.com/push/widget.js" async></script>
 * Served from the same origin as the site (a reverse proxy of /push/), it subscribes in place;
 * from another origin it opens the subscribe page in a small window. It never shows again for
 * two weeks once closed, and never when notifications are already on or blocked. */
(function () {
  'use strict';
  var C = __SIAR_CONFIG__;
  var HIDE_KEY = 'siar-push-widget-hidden-until';
  var DONE_KEY = 'siar-push-widget-done';
  if (!('Notification' in window) || !('serviceWorker' in navigator) || !('PushManager' in window)) return;
  if (Notification.permission === 'denied') return;
  try {
    if (localStorage.getItem(DONE_KEY) && Notification.permission === 'granted') return;
    if (Number(localStorage.getItem(HIDE_KEY) || 0) > Date.now()) return;
  } catch (e) { /* storage blocked: show the prompt anyway */ }

  var base = new URL(C.base, document.baseURI);
  var sameOrigin = base.origin === window.location.origin;

  function keyBytes(b64) {
    var padded = (b64 + '==='.slice((b64.length + 3) % 4)).replace(/-/g, '+').replace(/_/g, '/');
    var raw = atob(padded), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function build() {
    var host = document.createElement('div');
    host.setAttribute('data-siar-push', '');
    var root = host.attachShadow ? host.attachShadow({ mode: 'open' }) : host;
    var css =
      '.box{position:fixed;z-index:2147483000;left:12px;right:12px;bottom:12px;max-width:420px;margin:0 auto;' +
      'background:#fff;color:#1d1d1f;border-radius:14px;box-shadow:0 6px 30px rgba(0,0,0,.25);padding:14px 44px 14px 16px;' +
      'font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}' +
      '.box p{margin:0 0 10px}.go{border:0;border-radius:10px;background:#c8102e;color:#fff;font:inherit;' +
      'font-weight:700;min-height:44px;padding:8px 16px;cursor:pointer;width:100%}' +
      '.x{position:absolute;top:6px;right:6px;width:36px;height:36px;border:0;background:none;font-size:22px;' +
      'line-height:1;color:#5c5c66;cursor:pointer}.msg{margin:8px 0 0;font-size:13px}';
    // A constructed stylesheet is not "inline style" to a strict Content-Security-Policy.
    if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && CSSStyleSheet.prototype.replaceSync) {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      root.adoptedStyleSheets = [sheet];
    } else {
      var style = document.createElement('style');
      style.textContent = css;
      root.appendChild(style);
    }
    var box = document.createElement('div');
    box.className = 'box';
    box.setAttribute('role', 'dialog');
    box.innerHTML = '<p class="text"></p><button class="go" type="button"></button>' +
      '<button class="x" type="button">\u00d7</button><p class="msg" role="status" hidden></p>';
    root.appendChild(box);
    root.querySelector('.text').textContent = C.text;
    root.querySelector('.go').textContent = C.button;
    root.querySelector('.x').setAttribute('aria-label', C.close);
    root.querySelector('.x').addEventListener('click', function () {
      try { localStorage.setItem(HIDE_KEY, String(Date.now() + 14 * 86400000)); } catch (e) { /* ignore */ }
      host.remove();
    });
    root.querySelector('.go').addEventListener('click', function () {
      if (!sameOrigin) {
        window.open(base.href, 'siar-push', 'width=480,height=720');
        host.remove();
        return;
      }
      subscribeHere(root, host);
    });
    document.body.appendChild(host);
  }

  function subscribeHere(root, host) {
    var msg = root.querySelector('.msg');
    function fail() {
      // Anything unusual (blocked, no push service): the full page explains and helps.
      window.location.href = base.href;
    }
    Notification.requestPermission().then(function (answer) {
      if (answer !== 'granted') return fail();
      return navigator.serviceWorker.register(new URL('sw.js', base).href, { scope: base.pathname })
        .then(function (reg) {
          return Promise.race([
            reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(C.publicKey) }),
            new Promise(function (_, reject) { setTimeout(function () { reject(new Error('timeout')); }, 15000); })
          ]);
        })
        .then(function (sub) {
          return fetch(new URL('subscribe', base).href, {
            method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ subscription: sub.toJSON(), topics: [] })
          });
        })
        .then(function (response) {
          if (!response.ok) throw new Error('HTTP ' + response.status);
          try { localStorage.setItem(DONE_KEY, '1'); } catch (e) { /* ignore */ }
          msg.hidden = false;
          msg.textContent = C.done;
          setTimeout(function () { host.remove(); }, 3000);
        });
    }).catch(fail);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', build);
  else build();
})();
