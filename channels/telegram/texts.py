"""What the reader bot says, in Indonesian and English, and how admin reports are fitted."""

from __future__ import annotations

import html
from collections.abc import Sequence

from bot.counting import count_utf16

TEXTS: dict[str, dict[str, str]] = {
    "id": {
        "welcome": "👋 Selamat datang di <b>{site}</b>!\nAnda akan menerima berita terbaru di sini begitu "
        "terbit. Pilih topik dengan /topik, lihat berita terbaru dengan /terbaru, berhenti "
        "dengan /stop.",
        "welcome_back": "Anda sudah berlangganan {site}. Atur topik dengan /topik.",
        "stopped": "Anda berhenti berlangganan {site}. Kirim /start untuk berlangganan lagi.",
        "not_subscribed": "Anda belum berlangganan. Kirim /start dulu.",
        "group_admin_only": "Hanya admin grup yang bisa mengatur langganan grup ini.",
        "topics": "Pilih topik yang ingin Anda terima (✅ = aktif). Tanpa pilihan = semua berita.",
        "topics_all": "Semua topik",
        "topics_done": "Selesai",
        "topics_saved": "Topik disimpan.",
        "no_topics": "Belum ada topik; Anda menerima semua berita.",
        "latest": "📰 <b>Berita terbaru</b>",
        "no_stories": "Belum ada berita.",
        "language": "Pilih bahasa:",
        "language_set": "Bahasa diganti ke Bahasa Indonesia.",
        "help": "Perintah:\n/start — berlangganan\n/stop — berhenti\n/topik — pilih topik\n"
        "/terbaru — 5 berita terbaru\n/senyap 22-06 — jam senyap (tanpa bunyi notifikasi; "
        "/senyap off mematikannya)\n/ringkasan — hanya ringkasan berita (nyala/mati)\n"
        "/bahasa — ganti bahasa\n/bantuan — bantuan ini",
        "quiet_usage": "Kirim /senyap 22-06 (atau 22:30-06:00) agar berita pada jam itu datang tanpa "
        "bunyi notifikasi; /senyap off untuk mematikannya. Berita penting tetap berbunyi.",
        "quiet_now": "Jam senyap Anda: {hours} ({zone}).",
        "quiet_none": "Anda belum mengatur jam senyap.",
        "quiet_set": "🔕 Jam senyap diatur: {hours} ({zone}). Berita pada jam itu datang tanpa bunyi; "
        "berita penting tetap berbunyi.",
        "quiet_off": "🔔 Jam senyap dimatikan.",
        "quiet_bad": "Jam tidak dikenali: {value}. Contoh: /senyap 22-06 atau /senyap 22:30-06:00.",
        "digest_on": "📰 Anda kini hanya menerima ringkasan berita (dan berita penting). "
        "Kirim /ringkasan lagi untuk menerima semua berita.",
        "digest_off": "Anda kembali menerima setiap berita begitu terbit.",
        "digest_none": "Bot ini belum mengirim ringkasan berita; Anda tetap menerima setiap berita.",
        "unknown": "Maaf, saya tidak mengerti. Kirim /bantuan untuk daftar perintah.",
        "follow": "Ikuti kami",
        "too_many": "Terlalu banyak perintah. Coba lagi dalam satu menit.",
    },
    "en": {
        "welcome": "👋 Welcome to <b>{site}</b>!\nYou will get the newest stories here as soon as they are "
        "published. Choose topics with /topics, see the latest with /latest, stop with /stop.",
        "welcome_back": "You are already subscribed to {site}. Choose topics with /topics.",
        "stopped": "You have unsubscribed from {site}. Send /start to subscribe again.",
        "not_subscribed": "You are not subscribed yet. Send /start first.",
        "group_admin_only": "Only group admins can manage this group's subscription.",
        "topics": "Choose the topics you want (✅ = on). Nothing chosen = all stories.",
        "topics_all": "All topics",
        "topics_done": "Done",
        "topics_saved": "Topics saved.",
        "no_topics": "No topics yet; you get every story.",
        "latest": "📰 <b>Latest stories</b>",
        "no_stories": "No stories yet.",
        "language": "Choose a language:",
        "language_set": "Language set to English.",
        "help": "Commands:\n/start — subscribe\n/stop — unsubscribe\n/topics — choose topics\n"
        "/latest — 5 latest stories\n/quiet 22-06 — quiet hours (no notification sound; "
        "/quiet off ends them)\n/digest — digests only (on/off)\n"
        "/language — change language\n/help — this help",
        "quiet_usage": "Send /quiet 22-06 (or 22:30-06:00) to get stories at those hours without a "
        "notification sound; /quiet off to end it. Breaking news still notifies.",
        "quiet_now": "Your quiet hours: {hours} ({zone}).",
        "quiet_none": "You have no quiet hours.",
        "quiet_set": "🔕 Quiet hours set: {hours} ({zone}). Stories then arrive without a sound; "
        "breaking news still notifies.",
        "quiet_off": "🔔 Quiet hours off.",
        "quiet_bad": "Unrecognised hours: {value}. For example: /quiet 22-06 or /quiet 22:30-06:00.",
        "digest_on": "📰 You now get the digests only (and breaking news). Send /digest again to "
        "get every story.",
        "digest_off": "You get every story again as soon as it is published.",
        "digest_none": "This bot sends no digests yet; you keep getting every story.",
        "unknown": "Sorry, I did not understand. Send /help for the commands.",
        "follow": "Follow us",
        "too_many": "Too many commands. Please try again in a minute.",
    },
}
COMMANDS = {
    "id": [
        ("start", "Berlangganan berita"),
        ("stop", "Berhenti berlangganan"),
        ("topik", "Pilih topik"),
        ("terbaru", "5 berita terbaru"),
        ("senyap", "Jam senyap: /senyap 22-06"),
        ("ringkasan", "Hanya ringkasan berita (nyala/mati)"),
        ("bahasa", "Ganti bahasa"),
        ("bantuan", "Bantuan"),
    ],
    "en": [
        ("start", "Subscribe to the news"),
        ("stop", "Unsubscribe"),
        ("topics", "Choose topics"),
        ("latest", "5 latest stories"),
        ("quiet", "Quiet hours: /quiet 22-06"),
        ("digest", "Digests only (on/off)"),
        ("language", "Change language"),
        ("help", "Help"),
    ],
}
ADMIN_COMMANDS = {
    "id": [
        ("status", "Status antrean dan umpan"),
        ("stats", "Pelanggan dan kiriman hari ini"),
        ("umpan", "Keadaan setiap umpan"),
        ("jeda", "Tahan kiriman satu kanal: /jeda KANAL"),
        ("lanjut", "Lanjutkan kanal: /lanjut KANAL"),
        ("kirimulang", "Kirim ulang kiriman: /kirimulang ID"),
        ("tarik", "Tarik berita dari semua kanal: /tarik URL"),
        ("mengapa", "Riwayat keputusan berita: /mengapa URL"),
        ("uji", "Pratinjau berita terbaru di setiap kanal"),
    ],
    "en": [
        ("status", "Queues and feeds"),
        ("stats", "Subscribers and today's posts"),
        ("feeds", "Each feed's state"),
        ("pause", "Hold a channel's posts: /pause CHANNEL"),
        ("resume", "Resume a channel: /resume CHANNEL"),
        ("resend", "Send a post again: /resend ID"),
        ("retract", "Take a story back everywhere: /retract URL"),
        ("why", "A story's decisions: /why URL"),
        ("test", "Preview the newest story on every channel"),
    ],
}
REPORT_LIMIT = 4000  # UTF-16 units of text in an admin report (Telegram's limit is 4096)


def fit_report(lines: Sequence[tuple[str, bool]], limit: int = REPORT_LIMIT) -> str:
    """Plain `(text, bold)` lines -> a Telegram HTML message showing at most `limit` UTF-16 units.

    The plain text is fitted first, dropping whole lines from the end (and saying how many),
    and only then escaped and formatted: a cut never falls inside a tag or an entity."""
    texts = [text for text, _ in lines]
    sizes = [count_utf16(text) for text in texts]
    keep = len(lines)
    if sum(sizes) + len(lines) - 1 > limit:
        note_size = count_utf16(f"… {len(lines)} more") + 1  # the note and its line break
        used, keep = 0, 0
        while keep < len(lines) and used + sizes[keep] + (1 if keep else 0) + note_size <= limit:
            used += sizes[keep] + (1 if keep else 0)
            keep += 1
        if keep == 0:  # one enormous first line: cut it, at a character
            head = texts[0]
            while count_utf16(head) > limit - note_size:
                head = head[: len(head) - max(1, (count_utf16(head) - limit + note_size) // 2)]
            return f"{html.escape(head)}\n{html.escape(f'… {len(lines) - 1} more')}"
    out = [
        f"<b>{html.escape(text)}</b>" if bold and text else html.escape(text) for text, bold in lines[:keep]
    ]
    if keep < len(lines):
        out.append(html.escape(f"… {len(lines) - keep} more"))
    return "\n".join(out)
