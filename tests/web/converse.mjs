#!/usr/bin/env node
// A real web client for Gatehouse's integration tests: Converse.js (the npm
// package pinned in package.json) in Debian's headless Chromium, driven
// through its UI by playwright-core.
//
//   node tests/web/converse.mjs (--ws-url URL | --bosh-url URL)
//       --jid JID --password PW --contact-jid JID --contact-name NAME
//       --send TEXT --expect-reply TEXT [--timeout SECONDS]
//       [--print-sent-marker] [--reload-expect-history]
//       [--screenshot FILE.png] [--chromium PATH]
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
// `--reload-expect-history` then loads the page again with empty browser
// storage — in a new Chromium with a new profile directory (a fresh browser
// context), after checking that the same check finds Converse's cache in the
// first one, and checking that the new one holds nothing (localStorage,
// sessionStorage, IndexedDB, Cache Storage) before Converse starts. The
// first browser is closed as a closed tab is, without logging out. Converse
// logs in again, the chat opens from the roster, and the sent message and
// the reply must show in it again, each once and in order, and both must be
// in a MAM (XEP-0313) result Converse got for the chat — the server's
// archive, queried as a chat opens — and neither may have arrived live.
// Prints `history ok` before `web ok`.
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
       [--timeout SECONDS] [--print-sent-marker] [--reload-expect-history]
       [--screenshot FILE] [--chromium PATH]`;

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
            'reload-expect-history': { type: 'boolean', default: false },
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
// failure) and where chat messages came from (an archive query or live).
// Converse is started by the driver through window.startConverse.
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
window.harness = { statuses: [], events: [], mamResults: [], archived: [], live: [], initError: null };
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
            // Where chat messages come from: the results of MAM queries
            // (XEP-0313), and messages that arrive live.
            api.listen.on('MAMResult', ({ chatbox, messages }) => {
                window.harness.mamResults.push(chatbox.get('jid'));
                for (const m of messages) {
                    const entry = { chat: chatbox.get('jid'), body: m.body ?? null, is_archived: !!m.is_archived };
                    window.harness.archived.push(entry);
                }
                console.info('harness: MAM result for ' + chatbox.get('jid') + ': ' + messages.length + ' messages');
            });
            // Whether disco lists a feature (no archive: a fast failure).
            window.harness.supports = (feature, jid) => api.disco.supports(feature, jid);
            api.listen.on('message', ({ attrs }) => {
                if (attrs?.body) window.harness.live.push({ from: attrs.from, body: attrs.body });
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

/** What the run is doing, for a failure report. */
let step = 'starting';

/** Connection states that end the run at once. */
const CONNECTION_FAILED = ['ERROR', 'CONNFAIL', 'AUTHFAIL', 'DISCONNECTED', 'CONNTIMEOUT', 'ATTACHFAIL'];

/**
 * One Chromium with a profile of its own (a new, empty directory) showing
 * the page: whatever the page stores (localStorage, sessionStorage,
 * IndexedDB) lives in that profile and goes with it.
 */
class Browser {
    constructor(opts, origin, journal, deadline, label) {
        this.opts = opts;
        this.origin = origin;
        this.journal = journal;
        this.deadline = deadline;
        // Prefixes the journal lines of a second browser.
        this.tag = label ? `${label} ` : '';
        this.profile = mkdtempSync(join(tmpdir(), 'gatehouse-chromium-'));
        this.context = null;
        this.page = null;
        this.boshFailures = [];
        this.closed = false;
    }

    remaining() {
        return Math.max(1, this.deadline - Date.now());
    }

    log(line) {
        this.journal.add(this.tag + line);
    }

    async launch() {
        const { opts } = this;
        step = `launching Chromium${this.tag && ` (${this.tag.trim()})`}`;
        this.context = await chromium.launchPersistentContext(this.profile, {
            executablePath: opts.chromium,
            headless: true,
            args: CHROMIUM_FLAGS,
            viewport: { width: 1280, height: 900 },
            timeout: this.remaining(),
        });
        // Hermetic: the page reaches only itself and the server under test
        // (Converse's logged-out page shows its sponsors' logos from the web).
        const allowed = new Set([this.origin, new URL(opts['bosh-url'] ?? opts['ws-url']).origin]);
        const blocked = new Set();
        await this.context.route('**/*', (route) => {
            const url = route.request().url();
            if (url.startsWith('data:') || allowed.has(new URL(url).origin)) return route.continue();
            if (!blocked.has(url)) this.log(`[blocked] ${url}`);
            blocked.add(url);
            return route.abort('blockedbyclient');
        });
        const page = this.context.pages()[0] ?? (await this.context.newPage());
        this.page = page;
        page.on('console', (m) => this.log(`[${m.type()}] ${m.text()}`));
        page.on('pageerror', (e) => this.log(`[pageerror] ${e.message}`));
        // Strophe retries failed BOSH requests with a growing backoff and
        // gives up only after minutes; three network failures (refused,
        // blocked by CORS...) end the run instead.
        page.on('requestfailed', (r) => {
            const why = r.failure()?.errorText;
            this.log(`[requestfailed] ${r.method()} ${r.url()}: ${why}`);
            if (opts['bosh-url'] && r.url() === new URL(opts['bosh-url']).href) this.boshFailures.push(why);
        });
        page.on('response', (r) => r.status() >= 400 && this.log(`[http ${r.status()}] ${r.url()}`));
        page.on('websocket', (ws) => {
            this.log(`[websocket] open ${ws.url()}`);
            ws.on('socketerror', (e) => this.log(`[websocket] error ${e}`));
            ws.on('close', () => this.log(`[websocket] closed ${ws.url()}`));
        });
    }

    async load() {
        step = `loading the page ${this.origin}/`;
        // The load event comes after the bundle (a module script) ran.
        await this.page.goto(`${this.origin}/`, { waitUntil: 'load', timeout: this.remaining() });
        if (!(await this.page.evaluate(() => typeof window.converse?.initialize === 'function'))) {
            throw new Failure(`Converse.js did not load in the page ${this.origin}/`);
        }
    }

    /** Starts Converse, which logs in with auto_login. */
    async start() {
        const { opts } = this;
        step = 'starting Converse';
        const settings = {
            auto_login: true,
            jid: opts.jid,
            password: opts.password,
            discover_connection_methods: false,
            view_mode: 'fullscreen',
            loglevel: 'debug',
            assets_path: '/dist/',
            // Hermetic: a fresh profile each browser anyway; keep nothing
            // past the tab, never reconnect (a failure must end the run),
            // no attempt to resume an earlier session.
            persistent_store: 'sessionStorage',
            clear_cache_on_logout: true,
            keepalive: false,
            auto_reconnect: false,
            // No prompts or extras that could cover the UI under test.
            show_desktop_notifications: false,
            play_sounds: false,
            allow_non_roster_messaging: false,
            // MAM (XEP-0313) as Converse 14 does it by default: when a chat
            // opens, the newest page of its history (archived_messages_page_size,
            // 50) from the archive on our bare JID if disco there lists
            // urn:xmpp:mam:2; message_archiving unset leaves the server's
            // preferences alone.
            ...(opts['ws-url'] ? { websocket_url: opts['ws-url'] } : { bosh_service_url: opts['bosh-url'] }),
        };
        await this.page.evaluate((s) => window.startConverse(s), settings);
    }

    /** Why the connection failed, or null while it has not. */
    async connectionFailure() {
        const { opts, page } = this;
        const { statuses, initError } = await page
            .evaluate(() => window.harness)
            .catch(() => ({ statuses: [], initError: null }));
        if (initError) return `Converse did not start: ${initError}`;
        const bad = statuses.find((s) => CONNECTION_FAILED.includes(s.status));
        if (!bad && this.boshFailures.length >= 3) {
            return `BOSH requests to ${opts['bosh-url']} failed ${this.boshFailures.length} times: ${[...new Set(this.boshFailures)].join(', ')}`;
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
    }

    /** Waits for a DOM condition, failing fast on a failed connection. */
    async until(what, locator) {
        await this.poll(what, (timeout) => locator.first().waitFor({ state: 'visible', timeout }));
        return locator.first();
    }

    /** Waits for `predicate(arg)` to hold in the page, likewise. */
    async untilInPage(what, predicate, arg) {
        await this.poll(what, (timeout) => this.page.waitForFunction(predicate, arg, { timeout }));
    }

    /** Repeats `attempt(timeout)` until it does not time out. */
    async poll(what, attempt) {
        step = what;
        for (;;) {
            const why = await this.connectionFailure();
            if (why) throw new Failure(`${why} (while waiting for ${what})`);
            if (Date.now() >= this.deadline) {
                throw new Failure(`timed out after ${this.opts.timeout} s waiting for ${what}`);
            }
            try {
                return await attempt(Math.min(250, this.remaining()));
            } catch (e) {
                if (!/Timeout/i.test(e.message)) throw e;
            }
        }
    }

    /** What the page has stored for its origin, by kind of storage. */
    async stored() {
        return this.page.evaluate(async () => ({
            localStorage: Object.keys(localStorage),
            sessionStorage: Object.keys(sessionStorage),
            IndexedDB: (await indexedDB.databases()).map((d) => d.name),
            CacheStorage: typeof caches === 'undefined' ? [] : await caches.keys(),
        }));
    }

    /** Closes Chromium as closing the tab would (no logout) and deletes its profile. */
    async close() {
        if (this.closed) return;
        this.closed = true;
        await this.context?.close().catch(() => {});
        rmSync(this.profile, { recursive: true, force: true });
    }
}

/** The kinds of storage in `stored` that hold something, for a message. */
function nonEmpty(stored) {
    return Object.entries(stored)
        .filter(([, keys]) => keys.length)
        .map(([kind, keys]) => `${kind}: ${keys.slice(0, 5).join(', ')}${keys.length > 5 ? ', …' : ''}`);
}

/** 1. Logged in: the roster shows the contact under its name; its link. */
async function rosterContact(browser) {
    const { opts, page } = browser;
    const contact = page
        .locator(`converse-roster a.open-chat[data-jid="${cssString(opts['contact-jid'])}"]`)
        .filter({ has: page.locator('.contact-name', { hasText: exactText(opts['contact-name']) }) });
    return browser.until(`the roster to show ${opts['contact-jid']} named "${opts['contact-name']}"`, contact);
}

/** 2. A chat with the contact opens from the roster; the chat. */
async function openChat(browser, link) {
    const { opts, page } = browser;
    await link.click({ timeout: browser.remaining() });
    const chat = page.locator(`converse-chat[jid="${cssString(opts['contact-jid'])}"]`);
    await browser.until(`the chat with ${opts['contact-jid']} to open`, chat.locator('textarea.chat-textarea'));
    return chat;
}

/** Our own bubble with `text`. */
function ownMessage(chat, text) {
    return chat.locator('.chat-msg__content--me .chat-msg__text', { hasText: exactText(text) });
}

/** A bubble from the contact with `text`. */
function theirMessage(chat, text) {
    return chat.locator('.chat-msg__content--them .chat-msg__text', { hasText: exactText(text) });
}

/**
 * 3. Types the message as a person would and presses Enter; it is sent
 *    once it shows as our own bubble.
 */
async function sendMessage(browser, chat) {
    const { opts } = browser;
    step = 'typing the message';
    const textarea = chat.locator('textarea.chat-textarea').first();
    await textarea.click({ timeout: browser.remaining() });
    await textarea.pressSequentially(opts.send, { timeout: browser.remaining() });
    await textarea.press('Enter', { timeout: browser.remaining() });
    await browser.until(`our message "${opts.send}" to show in the chat`, ownMessage(chat, opts.send));
}

/** 4. The contact's reply shows in the chat. */
async function expectReply(browser, chat) {
    const { opts } = browser;
    await browser.until(
        `a reply "${opts['expect-reply']}" from ${opts['contact-jid']} in the chat`,
        theirMessage(chat, opts['expect-reply']),
    );
}

/** The chat shows no error. */
async function expectNoErrors(chat) {
    step = 'checking the chat for errors';
    const errors = await chat.locator('.chat-msg__error, .chat-error').allInnerTexts();
    if (errors.length) throw new Failure(`the chat shows errors: ${errors.join(' | ')}`);
}

/**
 * 5a. The first browser goes as a closed tab does, without logging out.
 *     Before, the check that must find nothing after the reload finds
 *     Converse's cache there (so it can see one).
 */
async function leavePage(first) {
    step = 'looking at what the first page stored';
    const before = nonEmpty(await first.stored());
    if (!before.length) {
        throw new Failure('the first page stored nothing: the empty-storage check after the reload would prove nothing');
    }
    first.log(`[storage] before the reload: ${before.join('; ')}`);
    step = 'closing the first browser';
    await first.close();
}

/**
 * 5b. The page again, in a new Chromium with a new, empty profile (a fresh
 *     browser context), so nothing Converse cached can come back: checked
 *     before Converse starts. The empty storage comes from the new profile,
 *     not from `persistent_store` (still sessionStorage, as in the first
 *     browser; Converse keeps some things in localStorage whatever it says).
 *     Converse then logs in anew, as a new resource (it has nothing to
 *     resume the first session with).
 */
async function reloadWithEmptyStorage(browser) {
    await browser.launch();
    await browser.load();
    step = 'checking that the reloaded page has no stored data';
    const after = nonEmpty(await browser.stored());
    if (after.length) throw new Failure(`the reloaded page has stored data before Converse starts: ${after.join('; ')}`);
    await browser.start();
}

/**
 * 6. After the reload, the chat shows the conversation again, once and in
 *    order, and Converse got both messages from the server's archive (a
 *    MAM result for the chat), none of them live.
 */
async function expectHistoryFromArchive(browser, chat) {
    const { opts, page } = browser;
    const sent = opts.send;
    const reply = opts['expect-reply'];
    const contact = opts['contact-jid'];
    step = `asking Converse whether ${opts.jid} has an archive`;
    const mam = await page.evaluate(
        ({ jid, ms }) =>
            Promise.race([
                window.harness.supports('urn:xmpp:mam:2', jid),
                new Promise((resolve) => setTimeout(() => resolve('no answer'), ms)),
            ]),
        { jid: opts.jid, ms: browser.remaining() },
    );
    if (mam !== true) {
        throw new Failure(`Converse finds no urn:xmpp:mam:2 in disco on ${opts.jid} (${mam}): it will not query the archive`);
    }
    await browser.untilInPage(
        `Converse to get an answer from the archive for the chat with ${contact} ` +
            `(it queries one as a chat opens when disco on our bare JID lists urn:xmpp:mam:2)`,
        (jid) => window.harness.mamResults.includes(jid),
        contact,
    );
    await browser.until(`our earlier message "${sent}" to show again after the reload`, ownMessage(chat, sent));
    await browser.until(`the earlier reply "${reply}" to show again after the reload`, theirMessage(chat, reply));

    step = 'checking the history after the reload';
    const times = [await ownMessage(chat, sent).count(), await theirMessage(chat, reply).count()];
    if (times[0] !== 1 || times[1] !== 1) {
        throw new Failure(
            `after the reload the chat shows our message ${times[0]} times and the reply ${times[1]} times, not once each`,
        );
    }
    const texts = (await chat.locator('.chat-msg__text').allInnerTexts()).map((t) => t.trim());
    if (texts.indexOf(sent) > texts.indexOf(reply)) {
        throw new Failure(`after the reload the chat shows the reply before our message: ${texts.join(' | ')}`);
    }
    const { archived, live } = await page.evaluate(() => window.harness);
    const notArchived = [sent, reply].filter(
        (body) => !archived.some((m) => m.chat === contact && m.is_archived && m.body === body),
    );
    if (notArchived.length) {
        throw new Failure(
            `after the reload the chat shows ${notArchived.map((b) => `"${b}"`).join(' and ')}, ` +
                `but no MAM result for ${contact} had it; MAM results: ${JSON.stringify(archived)}`,
        );
    }
    const arrivedLive = live.filter((m) => m.body === sent || m.body === reply);
    if (arrivedLive.length) {
        throw new Failure(
            `after the reload messages of the history came live, not from the archive: ${JSON.stringify(arrivedLive)}`,
        );
    }
}

async function main() {
    const opts = options();
    const deadline = Date.now() + opts.timeout * 1000;
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
    let browser = new Browser(opts, origin, journal, deadline, '');
    let sent = false;
    try {
        await browser.launch();
        await browser.load();
        await browser.start();
        let chat = await openChat(browser, await rosterContact(browser));
        await sendMessage(browser, chat);
        sent = true;
        if (opts['print-sent-marker']) console.log('sent');
        await expectReply(browser, chat);
        await expectNoErrors(chat);

        if (opts['reload-expect-history']) {
            await leavePage(browser);
            browser = new Browser(opts, origin, journal, deadline, 'reloaded');
            await reloadWithEmptyStorage(browser);
            chat = await openChat(browser, await rosterContact(browser));
            await expectHistoryFromArchive(browser, chat);
            await expectNoErrors(chat);
            console.log('history ok');
        }
        if (opts.screenshot) {
            await browser.page.screenshot({ path: opts.screenshot, fullPage: true, timeout: browser.remaining() });
        }
        console.log('web ok');
    } catch (e) {
        const reason = e instanceof Failure ? e.message : `${step}: ${e.message.split('\n')[0]}`;
        await report(reason, journal, browser.page, opts.screenshot, sent);
        process.exitCode = 1;
    } finally {
        await browser.close();
        server.close();
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
