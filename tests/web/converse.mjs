#!/usr/bin/env node
// A real web client for Gatehouse's integration tests: Converse.js (the npm
// package pinned in package.json) in Debian's headless Chromium, driven
// through its UI by playwright-core.
//
//   node tests/web/converse.mjs (--ws-url URL | --bosh-url URL)
//       --jid JID --password PW --contact-jid JID --contact-name NAME
//       --send TEXT --expect-reply TEXT [--timeout SECONDS]
//       [--print-sent-marker] [--screenshot FILE.png] [--chromium PATH]
//
// --screenshot saves the page as it was at the end (success or failure);
// --chromium defaults to Debian's /usr/bin/chromium.
//
// It serves a minimal page loading Converse from node_modules/converse.js/
// dist/ on 127.0.0.1 (port 0), logs in with auto_login over the given
// transport and then asserts on the DOM only: the roster shows the contact
// under its name, a chat with it opens from the roster, the message typed
// into the chat's textarea shows as our own bubble, and a bubble from the
// contact with the expected reply appears. Prints `web ok` and exits 0; on
// failure prints the reason, the last browser console lines and a DOM
// snippet to stderr and exits 1 (as soon as Converse reports a failed
// connection, not at the timeout). `--print-sent-marker` prints `sent` once
// the message has left, so a test can tell its peer to answer.
//
// Nothing here reaches the network but the URLs given: no browser download
// (Chromium is Debian's), no CDN (Converse is served from node_modules).

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, createReadStream, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const DIST = join(HERE, 'node_modules', 'converse.js', 'dist');

// The flags this machine needs: no sandbox (root, containers), no GPU, and
// nothing that phones home or downloads components.
const CHROMIUM_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
];

const USAGE = `usage: converse.mjs (--ws-url URL | --bosh-url URL) --jid JID --password PW
       --contact-jid JID --contact-name NAME --send TEXT --expect-reply TEXT
       [--timeout SECONDS] [--print-sent-marker] [--screenshot FILE] [--chromium PATH]`;

function options() {
    const { values } = parseArgs({
        options: {
            'ws-url': { type: 'string' },
            'bosh-url': { type: 'string' },
            jid: { type: 'string' },
            password: { type: 'string' },
            'contact-jid': { type: 'string' },
            'contact-name': { type: 'string' },
            send: { type: 'string' },
            'expect-reply': { type: 'string' },
            timeout: { type: 'string', default: '60' },
            'print-sent-marker': { type: 'boolean', default: false },
            screenshot: { type: 'string' },
            chromium: { type: 'string', default: '/usr/bin/chromium' },
            help: { type: 'boolean', default: false },
        },
        strict: true,
    });
    if (values.help) {
        console.log(USAGE);
        process.exit(0);
    }
    const missing = ['jid', 'password', 'contact-jid', 'contact-name', 'send', 'expect-reply'].filter(
        (k) => values[k] === undefined,
    );
    if (!!values['ws-url'] === !!values['bosh-url']) missing.unshift('exactly one of --ws-url, --bosh-url');
    const timeout = Number(values.timeout);
    if (!(timeout > 0)) missing.push('--timeout as a positive number of seconds');
    if (missing.length) {
        console.error(`converse.mjs: missing ${missing.join(', ')}\n${USAGE}`);
        process.exit(2);
    }
    return { ...values, timeout };
}

const CONTENT_TYPES = {
    '.js': 'text/javascript',
    '.mjs': 'text/javascript',
    '.css': 'text/css',
    '.json': 'application/json',
    '.map': 'application/json',
    '.wasm': 'application/wasm',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
    '.jpg': 'image/jpeg',
    '.gif': 'image/gif',
    '.ico': 'image/x-icon',
    '.woff': 'font/woff',
    '.woff2': 'font/woff2',
    '.ttf': 'font/ttf',
    '.eot': 'application/vnd.ms-fontobject',
    '.ogg': 'audio/ogg',
    '.mp3': 'audio/mpeg',
    '.html': 'text/html; charset=utf-8',
};

// The page: Converse's own bundle and stylesheet, and a small plugin that
// keeps the connection states Converse goes through (for a fast, readable
// failure). Converse is started by the driver through window.startConverse.
const PAGE = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Gatehouse web client test</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" type="text/css" href="/dist/converse.min.css">
<script type="module" src="/dist/converse.min.js"></script>
</head>
<body class="converse-fullscreen">
<script>
window.harness = { statuses: [], events: [], initError: null };
window.startConverse = function (settings) {
    const { Strophe } = converse.env;
    const names = Object.fromEntries(Object.entries(Strophe.Status).map(([k, v]) => [v, k]));
    converse.plugins.add('gatehouse-harness', {
        initialize() {
            const { api } = this._converse;
            api.listen.on('connfeedback', (feedback) => {
                const status = names[feedback.get('connection_status')] ?? String(feedback.get('connection_status'));
                const entry = { status, message: feedback.get('message') || '' };
                window.harness.statuses.push(entry);
                console.info('harness: connection ' + status + (entry.message ? ': ' + entry.message : ''));
            });
            for (const name of ['connected', 'reconnected', 'disconnected', 'rosterContactsFetched']) {
                api.listen.on(name, () => {
                    window.harness.events.push(name);
                    console.info('harness: ' + name);
                });
            }
        },
    });
    settings.whitelisted_plugins = ['gatehouse-harness'];
    // Not awaited by the driver: with auto_login it settles only once the
    // login does.
    converse.initialize(settings).catch((e) => {
        window.harness.initError = String(e && e.stack || e);
        console.error('harness: converse.initialize failed: ' + window.harness.initError);
    });
};
</script>
</body>
</html>
`;

/** Serves PAGE at / and Converse's dist/ under /dist/ on 127.0.0.1:0. */
function startStaticServer() {
    const server = createServer((req, res) => {
        const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
        if (path === '/' || path === '/index.html') {
            res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
            res.end(PAGE);
            return;
        }
        if (path.startsWith('/dist/')) {
            const file = normalize(join(DIST, path.slice('/dist/'.length)));
            if (file.startsWith(DIST + sep)) {
                try {
                    const st = statSync(file);
                    if (st.isFile()) {
                        res.writeHead(200, {
                            'content-type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream',
                            'content-length': st.size,
                        });
                        createReadStream(file).pipe(res);
                        return;
                    }
                } catch {
                    // not there: 404 below
                }
            }
        }
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found');
    });
    return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve(server));
    });
}

/** The last `max` lines of what the browser said, for a failure report. */
class Journal {
    constructor(max = 80) {
        this.max = max;
        this.lines = [];
    }
    add(line) {
        this.lines.push(line.length > 2000 ? line.slice(0, 2000) + ' …' : line);
        if (this.lines.length > this.max) this.lines.shift();
    }
}

class Failure extends Error {}

async function main() {
    const opts = options();
    const deadline = Date.now() + opts.timeout * 1000;
    const remaining = () => Math.max(1, deadline - Date.now());
    const journal = new Journal();
    // Whatever hangs (a browser that never starts or never closes), the run
    // ends shortly after its deadline.
    setTimeout(() => {
        console.error(`web failed: still running ${opts.timeout + 15} s after the start`);
        for (const l of journal.lines) console.error(l);
        process.exit(1);
    }, (opts.timeout + 15) * 1000).unref();

    try {
        statSync(join(DIST, 'converse.min.js'));
    } catch {
        fail(`Converse.js is not installed: run \`npm ci\` in ${HERE}`, journal);
    }

    const server = await startStaticServer();
    const origin = `http://127.0.0.1:${server.address().port}`;
    const profile = mkdtempSync(join(tmpdir(), 'gatehouse-chromium-'));
    let context;
    let page;
    let sent = false;
    let step = 'launching Chromium';
    try {
        context = await chromium.launchPersistentContext(profile, {
            executablePath: opts.chromium,
            headless: true,
            args: CHROMIUM_FLAGS,
            viewport: { width: 1280, height: 900 },
            timeout: remaining(),
        });
        // Hermetic: the page reaches only itself and the server under test
        // (Converse's logged-out page shows its sponsors' logos from the web).
        const allowed = new Set([origin, new URL(opts['bosh-url'] ?? opts['ws-url']).origin]);
        const blocked = new Set();
        await context.route('**/*', (route) => {
            const url = route.request().url();
            if (url.startsWith('data:') || allowed.has(new URL(url).origin)) return route.continue();
            if (!blocked.has(url)) journal.add(`[blocked] ${url}`);
            blocked.add(url);
            return route.abort('blockedbyclient');
        });
        page = context.pages()[0] ?? (await context.newPage());
        page.on('console', (m) => journal.add(`[${m.type()}] ${m.text()}`));
        page.on('pageerror', (e) => journal.add(`[pageerror] ${e.message}`));
        // Strophe retries failed BOSH requests with a growing backoff and
        // gives up only after minutes; three network failures (refused,
        // blocked by CORS...) end the run instead.
        const boshFailures = [];
        page.on('requestfailed', (r) => {
            const why = r.failure()?.errorText;
            journal.add(`[requestfailed] ${r.method()} ${r.url()}: ${why}`);
            if (opts['bosh-url'] && r.url() === new URL(opts['bosh-url']).href) boshFailures.push(why);
        });
        page.on('response', (r) => r.status() >= 400 && journal.add(`[http ${r.status()}] ${r.url()}`));
        page.on('websocket', (ws) => {
            journal.add(`[websocket] open ${ws.url()}`);
            ws.on('socketerror', (e) => journal.add(`[websocket] error ${e}`));
            ws.on('close', () => journal.add(`[websocket] closed ${ws.url()}`));
        });

        step = `loading the page ${origin}/`;
        // The load event comes after the bundle (a module script) ran.
        await page.goto(`${origin}/`, { waitUntil: 'load', timeout: remaining() });
        if (!(await page.evaluate(() => typeof window.converse?.initialize === 'function'))) {
            throw new Failure(`Converse.js did not load in the page ${origin}/`);
        }

        step = 'starting Converse';
        const settings = {
            auto_login: true,
            jid: opts.jid,
            password: opts.password,
            discover_connection_methods: false,
            view_mode: 'fullscreen',
            loglevel: 'debug',
            assets_path: '/dist/',
            // Hermetic: a fresh profile each run anyway; keep nothing past
            // the tab, never reconnect (a failure must end the run), no
            // attempt to resume an earlier session.
            persistent_store: 'sessionStorage',
            clear_cache_on_logout: true,
            keepalive: false,
            auto_reconnect: false,
            // No prompts or extras that could cover the UI under test.
            show_desktop_notifications: false,
            play_sounds: false,
            allow_non_roster_messaging: false,
            ...(opts['ws-url'] ? { websocket_url: opts['ws-url'] } : { bosh_service_url: opts['bosh-url'] }),
        };
        await page.evaluate((s) => window.startConverse(s), settings);

        // A failed connection ends the run at once, with Converse's reason.
        const connectionFailure = async () => {
            const { statuses, initError } = await page
                .evaluate(() => window.harness)
                .catch(() => ({ statuses: [], initError: null }));
            if (initError) return `Converse did not start: ${initError}`;
            const bad = statuses.find((s) =>
                ['ERROR', 'CONNFAIL', 'AUTHFAIL', 'DISCONNECTED', 'CONNTIMEOUT', 'ATTACHFAIL'].includes(s.status),
            );
            if (!bad && boshFailures.length >= 3) {
                return `BOSH requests to ${opts['bosh-url']} failed ${boshFailures.length} times: ${[...new Set(boshFailures)].join(', ')}`;
            }
            if (!bad) return null;
            const feedback = await page
                .locator('.conn-feedback .feedback-message')
                .first()
                .innerText({ timeout: 500 })
                .catch(() => '');
            const trail = statuses.map((s) => s.status).join(' → ');
            return `connection failed: ${bad.status}${bad.message ? ` (${bad.message})` : ''}` +
                `${feedback && feedback !== bad.message ? `; login form says: ${feedback}` : ''}; states: ${trail}`;
        };
        // Waits for a DOM condition, failing fast on a failed connection.
        const until = async (what, locator) => {
            step = what;
            for (;;) {
                const why = await connectionFailure();
                if (why) throw new Failure(`${why} (while waiting for ${what})`);
                if (Date.now() >= deadline) throw new Failure(`timed out after ${opts.timeout} s waiting for ${what}`);
                try {
                    await locator.first().waitFor({ state: 'visible', timeout: Math.min(250, remaining()) });
                    return locator.first();
                } catch (e) {
                    if (!/Timeout/i.test(e.message)) throw e;
                }
            }
        };

        // 1. Logged in: the roster shows the contact under its name.
        const contact = page.locator(
            `converse-roster a.open-chat[data-jid="${cssString(opts['contact-jid'])}"]`,
        ).filter({ has: page.locator('.contact-name', { hasText: exactText(opts['contact-name']) }) });
        const link = await until(
            `the roster to show ${opts['contact-jid']} named "${opts['contact-name']}"`,
            contact,
        );

        // 2. A chat with the contact opens from the roster.
        await link.click({ timeout: remaining() });
        const chat = page.locator(`converse-chat[jid="${cssString(opts['contact-jid'])}"]`);
        const textarea = await until(
            `the chat with ${opts['contact-jid']} to open`,
            chat.locator('textarea.chat-textarea'),
        );

        // 3. Type the message as a person would and press Enter; it is sent
        //    once it shows as our own bubble.
        step = 'typing the message';
        await textarea.click({ timeout: remaining() });
        await textarea.pressSequentially(opts.send, { timeout: remaining() });
        await textarea.press('Enter', { timeout: remaining() });
        await until(
            `our message "${opts.send}" to show in the chat`,
            chat.locator('.chat-msg__content--me .chat-msg__text', { hasText: exactText(opts.send) }),
        );
        sent = true;
        if (opts['print-sent-marker']) console.log('sent');

        // 4. The contact's reply shows in the chat.
        await until(
            `a reply "${opts['expect-reply']}" from ${opts['contact-jid']} in the chat`,
            chat.locator('.chat-msg__content--them .chat-msg__text', { hasText: exactText(opts['expect-reply']) }),
        );
        const errors = await chat.locator('.chat-msg__error, .chat-error').allInnerTexts();
        if (errors.length) throw new Failure(`the chat shows errors: ${errors.join(' | ')}`);
        if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true, timeout: remaining() });
        console.log('web ok');
    } catch (e) {
        const reason = e instanceof Failure ? e.message : `${step}: ${e.message.split('\n')[0]}`;
        await report(reason, journal, page, opts.screenshot, sent);
        process.exitCode = 1;
    } finally {
        await context?.close().catch(() => {});
        server.close();
        rmSync(profile, { recursive: true, force: true });
    }
}

/** Quotes a value for a CSS attribute selector in double quotes. */
function cssString(s) {
    return s.replace(/["\\]/g, '\\$&');
}

/** A regular expression matching `s` as the whole (trimmed) text. */
function exactText(s) {
    return new RegExp(`^\\s*${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`);
}

async function report(reason, journal, page, screenshot, sent) {
    const out = [`web failed: ${reason}`];
    if (sent) out.push('(the message had been sent)');
    out.push('--- last browser console lines ---', ...journal.lines);
    if (page) {
        const dom = await page
            .evaluate(() => {
                const root = document.querySelector('converse-root') ?? document.body;
                const text = root.innerText.replace(/\n{2,}/g, '\n').trim();
                return { text, html: root.outerHTML.replace(/<!--[^]*?-->/g, '').replace(/\s{2,}/g, ' ') };
            })
            .catch((e) => ({ text: '', html: `(no DOM: ${e.message})` }));
        out.push('--- visible text ---', dom.text.slice(0, 3000));
        out.push('--- DOM snippet ---', dom.html.length > 6000 ? dom.html.slice(0, 6000) + ' …' : dom.html);
        if (screenshot) {
            await page
                .screenshot({ path: screenshot, fullPage: true, timeout: 5000 })
                .then(() => out.push(`--- screenshot: ${screenshot} ---`))
                .catch((e) => out.push(`(no screenshot: ${e.message})`));
        }
    }
    console.error(out.join('\n'));
}

function fail(reason, journal) {
    console.error(`web failed: ${reason}`);
    for (const l of journal.lines) console.error(l);
    process.exit(1);
}

main().catch((e) => {
    console.error(`web failed: ${e.stack ?? e}`);
    process.exit(1);
});
