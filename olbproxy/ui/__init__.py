"""The team's web page, served by the proxy at ``/ui/``.

    site.py       Site: the static files (read once) and the headers that keep them safe
    static/       the page itself: plain ES modules, one stylesheet, no build step
      app.js        the header and the view chosen by the #fragment
      login.js      login and sign-up
      chat.js       rooms and the streaming chat
      account.js    API keys and password
      admin.js      live load and users (admins)
      api.js  session.js  markdown.js  i18n.js  dom.js
      vendor/       marked and DOMPurify from npm, pinned and re-fetched by
                    scripts/vendor-ui.sh, with their licences (VERSIONS lists them)

The page uses the proxy's public HTTP API like any other client, with a Bearer token:
nothing here is privileged, and no route but the files themselves is anonymous.
"""
