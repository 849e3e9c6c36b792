// UI strings of the chat app: English and Simplified Chinese.
// `{name}` placeholders are filled by t(); values are inserted as text, never HTML.

export const LANGUAGES = [
  ['en', 'English'],
  ['zh-CN', '简体中文'],
];

const en = {
  'app.name': 'Switchboard',
  'signin.lead': 'Real-time chat. Pick a nickname to start.',
  'signin.nickname': 'Nickname',
  'signin.nicknamePlaceholder': 'e.g. alice',
  'signin.useToken': 'Sign in with a token',
  'signin.token': 'Access token (JWT)',
  'signin.submit': 'Sign in',
  'signin.connecting': 'Connecting…',
  'signin.tokenNeeded': 'This server needs an access token.',
  'signin.nicknameRequired': 'Enter a nickname.',
  'error.refused': 'The server refused: {message}',
  'error.tooLongBytes': '{what} is too long: {bytes} bytes, at most {max} (a Chinese character takes 3 bytes).',
  'error.tooLong': '{what} is too long: at most {max} bytes (a Chinese character takes 3 bytes).',
  'error.empty': '{what} must not be empty.',
  'error.control': '{what} must not contain control characters.',
  'error.space': '{what} must not start or end with a space.',
  'error.unauthorized': 'The access token was not accepted: it is missing, invalid or expired.',
  'error.forbidden': 'This server does not allow that.',
  'error.rateLimited': 'Too many requests: wait a moment and try again.',
  'error.tooLarge': 'The message is too long for this server.',
  'error.unavailable': 'The server cannot do that right now: try again later.',
  'error.kicked': 'The server disconnected you.',
  'what.user': 'The nickname',
  'what.room': 'The room name',
  'what.device': 'The device name',
  'language': 'Language',
  'signout': 'Sign out',
  'account': 'Account',
  'account.signedInAs': 'Signed in as {user}',
  'conn.connected': 'Connected',
  'conn.connectedSse': 'Connected (HTTP fallback)',
  'conn.sseTitle': 'WebSockets do not get through on this network: using HTTP (Server-Sent Events) instead. The WebSocket is tried again every minute.',
  'conn.connecting': 'Connecting…',
  'conn.reconnecting': 'Reconnecting…',
  'conn.offline': 'Offline',
  'conn.unsent': '{count} unsent',
  'conn.retryIn': 'Reconnecting in {seconds} s',
  'rooms': 'Rooms',
  'rooms.joinPlaceholder': 'Join or create a room',
  'rooms.join': 'Join',
  'rooms.online': '{count} online',
  'rooms.empty': 'No rooms yet: join one below.',
  'directs': 'Direct messages',
  'directs.placeholder': 'Message a user',
  'directs.start': 'Open',
  'directs.empty': 'No conversations yet.',
  'unread': '{count} unread',
  'directs.preview': '{user}: {text}',
  'typing.one': '{user} is typing…',
  'typing.two': '{a} and {b} are typing…',
  'typing.many': '{a}, {b} and {count} others are typing…',
  'typing.short': 'typing…',
  'msg.actions': 'Message actions',
  'msg.edit': 'Edit',
  'msg.recall': 'Recall',
  'msg.edited': '(edited)',
  'msg.editedAt': 'Edited {time}',
  'msg.editLabel': 'Edit message',
  'msg.save': 'Save',
  'msg.cancel': 'Cancel',
  'msg.saving': 'Saving…',
  'msg.recalling': 'Recalling…',
  'recalled.you': 'You recalled a message',
  'recalled.other': '{user} recalled a message',
  'change.late.edit': 'It is too late to edit this message.',
  'change.late.recall': 'It is too late to recall this message.',
  'change.gone': 'This message is no longer available.',
  'change.recalled': 'This message was recalled.',
  'members': 'Members',
  'members.show': 'Members',
  'members.you': '(you)',
  'members.message': 'Send {user} a direct message',
  'leave': 'Leave',
  'back': 'Back',
  'composer.placeholder': 'Message {name}',
  'composer.send': 'Send',
  'notice.joined': '{user} joined',
  'notice.left': '{user} left',
  'notice.joinedMany': '{users} and {count} others joined',
  'notice.leftMany': '{users} and {count} others left',
  'notice.changedMany': '{count} more people joined or left',
  'list.separator': ', ',
  'notice.reset': 'Some earlier messages are no longer available.',
  'notice.noHistory': 'This is the beginning of the conversation.',
  'history.loading': 'Loading earlier messages…',
  'status.sending': 'Sending…',
  'status.queued': 'Waiting for connection',
  'status.sent': 'Sent',
  'status.delivered': 'Delivered',
  'status.read': 'Read',
  'status.failed': 'Not sent',
  'status.retry': 'Retry',
  'you': 'You',
  'welcome.title': 'Welcome, {user}',
  'welcome.text': 'Pick a room on the left, or join a new one.',
};

const zhCN = {
  'app.name': 'Switchboard',
  'signin.lead': '实时聊天。输入昵称即可开始。',
  'signin.nickname': '昵称',
  'signin.nicknamePlaceholder': '例如：小明',
  'signin.useToken': '使用令牌登录',
  'signin.token': '访问令牌（JWT）',
  'signin.submit': '登录',
  'signin.connecting': '正在连接…',
  'signin.tokenNeeded': '此服务器需要访问令牌。',
  'signin.nicknameRequired': '请输入昵称。',
  'error.refused': '服务器拒绝：{message}',
  'error.tooLongBytes': '{what}太长：{bytes} 字节，最多 {max} 字节（一个汉字占 3 字节）。',
  'error.tooLong': '{what}太长：最多 {max} 字节（一个汉字占 3 字节）。',
  'error.empty': '{what}不能为空。',
  'error.control': '{what}不能包含控制字符。',
  'error.space': '{what}的开头和结尾不能是空格。',
  'error.unauthorized': '访问令牌未被接受：缺失、无效或已过期。',
  'error.forbidden': '此服务器不允许这样做。',
  'error.rateLimited': '请求过于频繁，请稍后再试。',
  'error.tooLarge': '消息太长，服务器无法接受。',
  'error.unavailable': '服务器暂时无法处理，请稍后再试。',
  'error.kicked': '服务器断开了你的连接。',
  'what.user': '昵称',
  'what.room': '聊天室名称',
  'what.device': '设备名称',
  'language': '语言',
  'signout': '退出',
  'account': '账户',
  'account.signedInAs': '当前用户：{user}',
  'conn.connected': '已连接',
  'conn.connectedSse': '已连接（HTTP 备用通道）',
  'conn.sseTitle': '此网络无法使用 WebSocket，已改用 HTTP（Server-Sent Events）。每分钟会重新尝试 WebSocket。',
  'conn.connecting': '正在连接…',
  'conn.reconnecting': '正在重新连接…',
  'conn.offline': '离线',
  'conn.unsent': '{count} 条未发送',
  'conn.retryIn': '{seconds} 秒后重新连接',
  'rooms': '聊天室',
  'rooms.joinPlaceholder': '加入或创建聊天室',
  'rooms.join': '加入',
  'rooms.online': '{count} 人在线',
  'rooms.empty': '还没有聊天室：在下方加入一个。',
  'directs': '私信',
  'directs.placeholder': '给用户发私信',
  'directs.start': '打开',
  'directs.empty': '还没有私信。',
  'unread': '{count} 条未读',
  'directs.preview': '{user}：{text}',
  'typing.one': '{user} 正在输入…',
  'typing.two': '{a}、{b} 正在输入…',
  'typing.many': '{a}、{b} 等 {total} 人正在输入…',
  'typing.short': '正在输入…',
  'msg.actions': '消息操作',
  'msg.edit': '编辑',
  'msg.recall': '撤回',
  'msg.edited': '(已编辑)',
  'msg.editedAt': '编辑于 {time}',
  'msg.editLabel': '编辑消息',
  'msg.save': '保存',
  'msg.cancel': '取消',
  'msg.saving': '正在保存…',
  'msg.recalling': '正在撤回…',
  'recalled.you': '你撤回了一条消息',
  'recalled.other': '{user} 撤回了一条消息',
  'change.late.edit': '已超过可编辑的时间，无法编辑。',
  'change.late.recall': '已超过可撤回的时间，无法撤回。',
  'change.gone': '这条消息已不存在。',
  'change.recalled': '这条消息已被撤回。',
  'members': '成员',
  'members.show': '成员',
  'members.you': '（你）',
  'members.message': '给 {user} 发私信',
  'leave': '退出聊天室',
  'back': '返回',
  'composer.placeholder': '发消息给 {name}',
  'composer.send': '发送',
  'notice.joined': '{user} 加入了',
  'notice.left': '{user} 离开了',
  'notice.joinedMany': '{users} 等 {total} 人加入了',
  'notice.leftMany': '{users} 等 {total} 人离开了',
  'notice.changedMany': '另有 {count} 人加入或离开',
  'list.separator': '、',
  'notice.reset': '部分较早的消息已无法获取。',
  'notice.noHistory': '这是对话的开始。',
  'history.loading': '正在加载更早的消息…',
  'status.sending': '发送中…',
  'status.queued': '等待连接',
  'status.sent': '已发送',
  'status.delivered': '已送达',
  'status.read': '已读',
  'status.failed': '未发送',
  'status.retry': '重试',
  'you': '你',
  'welcome.title': '欢迎，{user}',
  'welcome.text': '在左侧选择聊天室，或加入一个新的。',
};

export const STRINGS = { en, 'zh-CN': zhCN };

/** The UI language: a saved choice, else the browser's (any zh-* → zh-CN), else English. */
export function pickLanguage(saved, browserLanguages) {
  if (saved && STRINGS[saved]) return saved;
  for (const lang of browserLanguages || []) {
    const l = String(lang).toLowerCase();
    if (l.startsWith('zh')) return 'zh-CN';
    if (l.startsWith('en')) return 'en';
  }
  return 'en';
}

/** The string `key` in `lang` with `{name}` placeholders filled from `params`. */
export function translate(lang, key, params) {
  const table = STRINGS[lang] || en;
  const template = table[key] ?? en[key] ?? key;
  if (!params) return template;
  return template.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

// What the server says in `error.message` about a bad name (see
// crates/protocol/src/names.rs), possibly after a field prefix ("with: ").
const NAME_ERRORS = [
  [/^(user|room|device) is longer than (\d+) bytes$/, 'error.tooLong'],
  [/^(user|room|device) must not be empty$/, 'error.empty'],
  [/^(user|room|device) must not contain control characters$/, 'error.control'],
  [/^(user|room|device) must not start or end with whitespace$/, 'error.space'],
];
const CODE_ERRORS = {
  unauthorized: 'error.unauthorized',
  forbidden: 'error.forbidden',
  rate_limited: 'error.rateLimited',
  too_large: 'error.tooLarge',
  unavailable: 'error.unavailable',
  kicked: 'error.kicked',
};

/**
 * A server or client error (`{code, message}`) as a sentence in `lang`:
 * known refusals fully translated; anything else as "The server refused:"
 * with the server's own (English) message.
 */
export function describeError(lang, err) {
  const code = err && err.code;
  const message = String((err && err.message) || code || '');
  if (code === 'bad_request') {
    const bare = message.replace(/^\w+: /, '');
    for (const [pattern, key] of NAME_ERRORS) {
      const m = bare.match(pattern);
      if (m) return translate(lang, key, { what: translate(lang, `what.${m[1]}`), max: m[2] });
    }
  }
  if (CODE_ERRORS[code]) return translate(lang, CODE_ERRORS[code]);
  return translate(lang, 'error.refused', { message });
}
