/* siar subscribe page: one button, topic choice, clear errors, help when notifications are blocked. */
(function () {
  'use strict';
  var cfg = JSON.parse(document.getElementById('siar-push-config').textContent);
  var S = cfg.strings;
  var TIMEOUT_MS = 15000;  // a browser without a reachable push service must never leave us hanging
  var TOPICS_KEY = 'siar-push-topics';
  function $(id) { return document.getElementById(id); }
  var button = $('subscribe'), statusBox = $('status'), blocked = $('blocked'),
      unsubscribeButton = $('unsubscribe'), detail = $('error-detail');

  function setState(state) { document.body.setAttribute('data-state', state); }
  function setStatus(kind, text) { statusBox.className = 'status ' + kind; statusBox.textContent = text; }
  function showDetail(text) {
    detail.hidden = !text;
    detail.querySelector('code').textContent = text || '';
  }

  function browserId() {
    var ua = navigator.userAgent;
    var iOS = /iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1);
    if (iOS) return 'safari-ios';
    if (/Android/.test(ua)) return 'android-chrome';
    if (/Firefox\//.test(ua)) return 'firefox';
    if (/Safari\//.test(ua) && !/Chrome\/|Chromium\/|Edg\//.test(ua)) return 'safari-mac';
    return 'chrome';
  }

  function withTimeout(promise) {
    return new Promise(function (resolve, reject) {
      var timer = setTimeout(function () {
        var err = new Error('no answer after ' + TIMEOUT_MS / 1000 + 's');
        err.name = 'TimeoutError';
        reject(err);
      }, TIMEOUT_MS);
      Promise.resolve(promise).then(function (v) { clearTimeout(timer); resolve(v); },
                                    function (e) { clearTimeout(timer); reject(e); });
    });
  }

  function keyBytes(b64) {
    var padded = (b64 + '==='.slice((b64.length + 3) % 4)).replace(/-/g, '+').replace(/_/g, '/');
    var raw = atob(padded), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function sameKey(a, b) {
    if (!a) return true;
    a = new Uint8Array(a);
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function chosenTopics() {
    return Array.prototype.map.call(document.querySelectorAll('input[name=topic]:checked'),
                                    function (el) { return el.value; });
  }
  function restoreTopics() {
    var saved = [];
    try { saved = JSON.parse(localStorage.getItem(TOPICS_KEY) || '[]'); } catch (e) { saved = []; }
    Array.prototype.forEach.call(document.querySelectorAll('input[name=topic]'), function (el) {
      el.checked = saved.indexOf(el.value) >= 0;
    });
  }

  function post(path, body) {
    return withTimeout(fetch(path, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body), credentials: 'same-origin'
    })).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) throw new Error(data.error || ('HTTP ' + response.status));
        return data;
      });
    });
  }

  function showTopics(visible) {
    var topics = $('topics');
    if (topics) topics.hidden = !visible;
  }

  function showBlocked() {
    setState('blocked');
    showTopics(false);
    button.hidden = true;
    unsubscribeButton.hidden = true;
    blocked.hidden = false;
    var mine = blocked.querySelector('[data-browser="' + browserId() + '"]');
    if (mine) { mine.open = true; blocked.insertBefore(mine, blocked.querySelector('details')); }
    setStatus('', '');  // the box below says it all
  }

  function showSubscribed() {
    setState('subscribed');
    showTopics(true);
    blocked.hidden = true;
    showDetail('');
    setStatus('ok', S.subscribed);
    var hasTopics = !!document.querySelector('input[name=topic]');
    button.hidden = !hasTopics;
    button.textContent = S.button_update;
    unsubscribeButton.hidden = false;
  }

  function showReady() {
    setState('ready');
    showTopics(true);
    blocked.hidden = true;
    button.hidden = false;
    button.textContent = S.button;
    unsubscribeButton.hidden = true;
  }

  // `step` says where it failed: 'sw' (service worker), 'push' (the browser's push service),
  // 'server' (our /push/subscribe) or anything else.
  function showError(err, step) {
    var message = S.error_generic;
    if (err && err.name === 'TimeoutError') message = S.error_timeout;
    else if (step === 'push') message = S.error_push_service;
    else if (step === 'server') message = S.error_server;
    setState('error');
    setStatus('error', message);
    showDetail(err ? (err.name || 'Error') + ': ' + (err.message || String(err)) : '');
    button.hidden = false;
    button.textContent = S.button_retry;
  }

  function permission() {
    return ('Notification' in window) ? Notification.permission : 'unsupported';
  }
  function askPermission() {
    // Old Safari only knows the callback form; new browsers return a promise.
    return new Promise(function (resolve) {
      var maybe = Notification.requestPermission(resolve);
      if (maybe && maybe.then) maybe.then(resolve, function () { resolve(Notification.permission); });
    });
  }

  var registration = null;
  function register() {
    return navigator.serviceWorker.register('sw.js', { scope: './' }).then(function (reg) {
      registration = reg;
      document.documentElement.setAttribute('data-sw', 'registered');
      return reg;
    });
  }

  function subscribe() {
    button.disabled = true;
    setState('busy');
    setStatus('busy', S.button_busy);
    showDetail('');
    var step = 'permission';
    askPermission().then(function (answer) {
      if (answer === 'denied') { showBlocked(); return null; }
      if (answer !== 'granted') { setState('ready'); setStatus('warn', S.dismissed); return null; }
      step = 'sw';
      return withTimeout(registration ? Promise.resolve(registration) : register())
        .then(function () { return withTimeout(navigator.serviceWorker.ready); })
        .then(function (reg) {
          step = 'push';
          var key = keyBytes(cfg.publicKey);
          return reg.pushManager.getSubscription().then(function (existing) {
            if (existing && !sameKey(existing.options && existing.options.applicationServerKey, key)) {
              return existing.unsubscribe().then(function () { return null; });
            }
            return existing;
          }).then(function (existing) {
            if (existing) return existing;
            return withTimeout(reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }));
          });
        })
        .then(function (sub) {
          var topics = chosenTopics();
          step = 'server';
          return post('subscribe', { subscription: sub.toJSON(), topics: topics }).then(function () {
            try { localStorage.setItem(TOPICS_KEY, JSON.stringify(topics)); } catch (e) { /* private mode */ }
            showSubscribed();
            return sub;
          });
        });
    }).catch(function (err) { showError(err, step); }).then(function () { button.disabled = false; });
  }

  function unsubscribe() {
    unsubscribeButton.disabled = true;
    var ready = registration ? registration.pushManager.getSubscription() : Promise.resolve(null);
    ready.then(function (sub) {
      if (!sub) return null;
      var endpoint = sub.endpoint;
      return sub.unsubscribe().then(function () { return post('unsubscribe', { endpoint: endpoint }); });
    }).then(function () {
      showReady();
      setStatus('ok', S.unsubscribed);
    }).catch(function (err) { showError(err, 'server'); })
      .then(function () { unsubscribeButton.disabled = false; });
  }

  function refresh() {
    var state = permission();
    if (state === 'denied') { showBlocked(); return Promise.resolve(); }
    if (!registration) { showReady(); return Promise.resolve(); }
    return registration.pushManager.getSubscription().then(function (sub) {
      if (sub && state === 'granted') showSubscribed(); else showReady();
    }, function () { showReady(); });
  }

  function start() {
    restoreTopics();
    button.addEventListener('click', subscribe);
    unsubscribeButton.addEventListener('click', unsubscribe);
    $('recheck').addEventListener('click', function () { window.location.reload(); });
    var supported = 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
    if (!supported) {
      setState('unsupported');
      button.hidden = true;
      var standalone = window.navigator.standalone === true;
      setStatus('warn', browserId() === 'safari-ios' && !standalone ? S.ios_hint : S.unsupported);
      return;
    }
    if (permission() === 'denied') showBlocked();
    register().then(refresh, function (err) {
      if (permission() !== 'denied') showError(err, 'sw');
    });
    if (navigator.permissions && navigator.permissions.query) {
      navigator.permissions.query({ name: 'notifications' }).then(function (status) {
        status.onchange = function () { refresh(); };
      }, function () { /* not every browser can query this */ });
    }
  }

  start();
})();
