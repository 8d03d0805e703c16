/* siar service worker: shows each pushed story and opens it on click. */
'use strict';

function safeUrl(value) {
  try {
    var url = new URL(value, self.location.href);
    return (url.protocol === 'https:' || url.protocol === 'http:') ? url.href : null;
  } catch (e) {
    return null;
  }
}

self.addEventListener('install', function () { self.skipWaiting(); });
self.addEventListener('activate', function (event) { event.waitUntil(self.clients.claim()); });

self.addEventListener('push', function (event) {
  var data = {};
  if (event.data) {
    try { data = event.data.json(); } catch (e) { data = { title: event.data.text() }; }
  }
  var options = {
    body: data.lead || '',
    tag: data.tag || undefined,  // the same story twice replaces, never stacks
    renotify: false,
    data: { url: safeUrl(data.url || ''), tag: data.tag || '' },
    timestamp: Date.now()
  };
  if (data.icon && safeUrl(data.icon)) options.icon = data.icon;
  if (data.badge && safeUrl(data.badge)) options.badge = data.badge;
  if (data.image && safeUrl(data.image)) options.image = data.image;
  event.waitUntil(self.registration.showNotification(data.title || self.location.hostname, options));
});

function reportClick(data) {
  if (!data.tag || !data.url) return Promise.resolve();
  return fetch(new URL('click', self.location.href).href, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ tag: data.tag, url: data.url }), keepalive: true
  }).catch(function () { /* a lost click count is not worth an error */ });
}

function openStory(url) {
  if (!url) return Promise.resolve();
  return self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then(function (windows) {
    for (var i = 0; i < windows.length; i++) {
      if (windows[i].url === url && 'focus' in windows[i]) return windows[i].focus();
    }
    return self.clients.openWindow ? self.clients.openWindow(url) : null;
  });
}

self.addEventListener('notificationclick', function (event) {
  var data = (event.notification && event.notification.data) || {};
  event.notification.close();
  event.waitUntil(Promise.all([openStory(data.url), reportClick(data)]));
});

// The browser renewed the subscription: register the new one in place of the old.
self.addEventListener('pushsubscriptionchange', function (event) {
  var old = event.oldSubscription;
  var renew = event.newSubscription ? Promise.resolve(event.newSubscription) :
    fetch(new URL('vapid-public-key', self.location.href).href).then(function (r) { return r.text(); })
      .then(function (key) {
        var padded = (key + '==='.slice((key.length + 3) % 4)).replace(/-/g, '+').replace(/_/g, '/');
        var raw = atob(padded), bytes = new Uint8Array(raw.length);
        for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
        return self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: bytes });
      });
  event.waitUntil(renew.then(function (sub) {
    return fetch(new URL('subscribe', self.location.href).href, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ subscription: sub.toJSON(), replaces: old ? old.endpoint : null })
    });
  }).catch(function () { /* the reader can subscribe again on the page */ }));
});
